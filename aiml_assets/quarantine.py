"""What a data check reports, and where the rows it fails go.

A check's message and metadata carry assets, columns, rules and counts only; the offending rows stay in the data
plane, in a quarantine Delta table in the environment's own bucket: the lab bucket where there is one (perishable:
the retention purge removes a quarantine as it does any lab table), else the scoring bucket. One table per asset
and check, named in the catalog beside the asset tables, so whoever investigates reads it with the grants the data
has. Each failing evaluation replaces the rows of the partitions it judged (an unpartitioned asset's: the whole
table), so a rerun replaces what the previous one left, and one product's or snapshot's failure does not erase
another's evidence. Its columns:
the rule, the asset partition the row was judged in, then the offending row itself (its own columns, so the GDPR
erasure finds a customer there as in any other table).

Writing it is one Spark job, and only when a rule fails."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from aiml_assets.asset_tables import AssetTable, TableAccess, table_name
from aiml_assets.settings import Settings

RULE, PARTITION = "quarantine_rule", "quarantine_partition"


QUARANTINE_PREFIX = "quarantine_"  # every quarantine table's key in its bucket starts so (the erasure finds them)


def quarantine_role(settings: Settings) -> str:
    return "lab" if "lab" in settings.storage.buckets else "scoring"


def quarantine_table(settings: Settings, asset: AssetKey, check: str) -> AssetTable:
    role = quarantine_role(settings)
    key = QUARANTINE_PREFIX + re.sub(r"[^a-z0-9_]", "_", "_".join([*asset.path, check]).lower())
    return AssetTable(table_name(settings, role, key), role, key, None, settings.catalog.table_owner)


@dataclass(frozen=True)
class Offending:
    """The rows failing a check's row rules (a lazy DataFrame: nothing runs until it is written)."""

    rows: DataFrame
    count: int
    partitions: frozenset[str | None]  # the asset partitions the rows were judged in (None: the whole asset)


def offending_rows(df: DataFrame, violations: Iterable, partition: str | None = None,
                   columns: list[str] | None = None) -> Offending | None:
    """One row per failing rule and row of `df` (its `columns`, default all), or None if no row rule failed."""
    failing = [v for v in violations if v.condition is not None]
    if not failing:
        return None
    # an all-null column without a type (a schema violation pandera reported) cannot be written to Parquet
    kept = [f.name for f in df.schema.fields if (columns is None or f.name in columns)
            and not isinstance(f.dataType, T.NullType)]
    frames = [df.select(F.lit(f"{v.column}: {v.rule}").alias(RULE), F.lit(partition).cast("string").alias(PARTITION),
                        *kept, v.condition.alias("_failing")).filter("_failing").drop("_failing") for v in failing]
    return Offending(reduce(DataFrame.unionByName, frames), sum(v.failed_rows for v in failing),
                     frozenset({None if partition is None else str(partition)}))


def combined(offending: Iterable[Offending | None]) -> Offending | None:
    found = [o for o in offending if o is not None]
    return reduce(lambda a, b: Offending(a.rows.unionByName(b.rows), a.count + b.count, a.partitions | b.partitions),
                  found) if found else None


@dataclass(frozen=True)
class Quarantined:
    table: str
    location: str
    version: int
    rows: int

    def describe(self) -> str:
        return (f"{self.rows} offending rows (one per failing rule and row) are in quarantine table {self.table} "
                f"(Delta version {self.version}), in the environment's own bucket")

    def metadata(self) -> dict:
        return {"quarantine_table": MetadataValue.text(self.table), "quarantine_location": MetadataValue.path(
            self.location), "quarantined_rows": MetadataValue.int(self.rows)}


def quarantine(io: TableAccess, table: AssetTable | None, offending: Offending | None) -> Quarantined | None:
    """Write the offending rows to `table`, replacing what an earlier evaluation left; None if there is nothing to
    write or nowhere to write it."""
    if table is None or offending is None:
        return None
    version = table.overwrite(io, _with_other_partitions(io, table, offending))
    table.register(io, comment="rows a failing check found: perishable, for investigation in the data plane",
                   properties={"dagster_run_id": io.run_id})
    return Quarantined(table.name, table.location(io), version, offending.count)


def _with_other_partitions(io: TableAccess, table: AssetTable, offending: Offending) -> DataFrame:
    """The new offending rows and the rows an earlier evaluation left for partitions this one did not judge."""
    if None in offending.partitions or not io.tables.exists(table.location(io)):
        return offending.rows
    earlier = io.tables.read(io.spark.get_session(), table.location(io))
    others = earlier.filter(~F.col(PARTITION).isin(sorted(offending.partitions)))
    return offending.rows.unionByName(others, allowMissingColumns=True)


def check_result(log, asset: AssetKey, failed: str, failures: list[str], metadata: dict,
                 quarantined: Quarantined | None = None, *, check: str | None = None) -> AssetCheckResult:
    """Passed if there are no `failures`; else an error whose message names the asset, what it `failed`, each
    failure (column, rule, counts) and the quarantine table. Logged to `log` (a Dagster logger) as it is recorded:
    counts only. `check` names the check where the step evaluates several."""
    target = dict(asset_key=asset, check_name=check)
    metadata = {**metadata, "violations": MetadataValue.int(len(failures))}
    if not failures:
        return AssetCheckResult(passed=True, metadata=metadata, **target)
    lines = failures + ([quarantined.describe()] if quarantined else [])
    message = f"{asset.to_user_string()} failed {failed}:\n  " + "\n  ".join(lines)
    log.error(message)
    metadata["failures"] = MetadataValue.md("\n".join(f"- {line}" for line in failures))
    return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=message,
                            metadata=metadata | (quarantined.metadata() if quarantined else {}), **target)
