"""Delta's per-file statistics (numRecords, minValues, maxValues, nullCount) from a Parquet file's footer, as
Databricks' writer records them: readers skip files by them, and they hold real values (an erasure must remove them)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq


def _json_value(value):
    """A footer statistic as Delta's stats JSON writes it, or None for a type it keeps no bounds of."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return value if not isinstance(value, float) or math.isfinite(value) else None


def file_statistics(path: Path) -> str:
    metadata = pq.ParquetFile(path).metadata
    bounds: dict[str, list] = {}
    nulls: dict[str, int] = {}
    for index in range(metadata.num_columns):
        name = metadata.schema.column(index).path
        if "." in name:
            continue  # nested fields: Delta nests their statistics; the asset tables have none
        chunks = [metadata.row_group(group).column(index).statistics for group in range(metadata.num_row_groups)]
        nulls[name] = sum(c.null_count for c in chunks if c is not None and c.has_null_count)
        if chunks and all(c is not None and c.has_min_max for c in chunks):
            low = _json_value(min(c.min for c in chunks))
            high = _json_value(max(c.max for c in chunks))
            if low is not None and high is not None:
                bounds[name] = [low, high]
    return json.dumps({"numRecords": metadata.num_rows,
                       "minValues": {name: low for name, (low, _) in bounds.items()},
                       "maxValues": {name: high for name, (_, high) in bounds.items()},
                       "nullCount": nulls})
