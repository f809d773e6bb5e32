"""What a feature table looks like, as materialization metadata: counts, null rates, distributions.

Aggregates only: customer-level values stay in the data plane, never in Dagster's event log."""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

from dagster import MetadataValue
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from aiml_assets.plots import figure, inline_markdown, to_png

QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95]


def _numeric(df: DataFrame) -> list[str]:
    return [f.name for f in df.schema.fields if isinstance(f.dataType, T.NumericType)]


def _union(frames: Iterable[DataFrame]) -> DataFrame:
    return reduce(DataFrame.unionByName, frames)


def profile_by_partition(frames: Iterable[DataFrame], partition_column: str) -> dict[str, dict]:
    """Per partition (as its key) of `frames` (one or more partitions each): rows, null rate of every column and
    quantiles of numeric ones, in one Spark job."""
    df = _union(frames)
    numeric = [c for c in _numeric(df) if c != partition_column]
    columns = [c for c in df.columns if c != partition_column]
    aggregates = [F.count(F.lit(1)).alias("_rows")]
    aggregates += [F.avg(F.col(c).isNull().cast("double")).alias(f"null::{c}") for c in columns]
    aggregates += [F.percentile_approx(c, QUANTILES, 1000).alias(f"q::{c}") for c in numeric]
    profiles = {}
    for row in df.groupBy(partition_column).agg(*aggregates).collect():
        totals = row.asDict()
        quantiles = {c: totals[f"q::{c}"] for c in numeric}
        profiles[str(totals[partition_column])] = {
            "dagster/row_count": MetadataValue.int(totals["_rows"]),
            "null_rate": MetadataValue.json({c: round(totals[f"null::{c}"] or 0.0, 4) for c in columns}),
            "distributions": MetadataValue.md(_distribution_table(quantiles)),
            "distribution_plot": MetadataValue.md(_plot(quantiles)),
        }
    return profiles


def take_up_by_partition(frames: Iterable[DataFrame], partition_column: str) -> dict[str, dict]:
    """Per partition (as its key) of training rows: rows, and rows and positive rate per product, in one Spark job."""
    stats: dict[str, dict[str, tuple[int, float]]] = {}
    for r in _union(frames).groupBy(partition_column, "product_code").agg(
            F.count(F.lit(1)).alias("rows"), F.avg("label").alias("rate")).collect():
        stats.setdefault(str(r[partition_column]), {})[r["product_code"]] = (r["rows"], r["rate"])
    return {key: {
        "dagster/row_count": MetadataValue.int(sum(n for n, _ in per_product.values())),
        "rows_per_product": MetadataValue.json({p: n for p, (n, _) in sorted(per_product.items())}),
        "positive_rate_per_product": MetadataValue.json({p: round(r, 5) for p, (_, r) in sorted(per_product.items())}),
    } for key, per_product in stats.items()}


def _distribution_table(quantiles: dict[str, list]) -> str:
    header = "| feature | " + " | ".join(f"p{int(q * 100)}" for q in QUANTILES) + " |"
    rule = "|---" * (len(QUANTILES) + 1) + "|"
    rows = [f"| {c} | " + " | ".join(f"{v:,.2f}" for v in (values or [])) + " |" for c, values in quantiles.items()]
    return "\n".join([header, rule, *rows])


def _plot(quantiles: dict[str, list]) -> str:
    """Box-style plot of every numeric feature's quantiles (scaled per feature), as an inline PNG."""
    names = [c for c, v in quantiles.items() if v]
    fig, ax = figure(8, 0.25 * len(names) + 1)
    for i, name in enumerate(names):
        low, q1, median, q3, high = quantiles[name]
        scale = (high - low) or 1.0
        ax.plot([0, 1], [i, i], color="lightgray", linewidth=1)
        ax.plot([(q1 - low) / scale, (q3 - low) / scale], [i, i], color="steelblue", linewidth=5)
        ax.plot([(median - low) / scale], [i], "k|", markersize=10)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("position between p5 and p95 (per feature); bar p25-p75, tick median")
    return inline_markdown(to_png(fig), "feature distributions")
