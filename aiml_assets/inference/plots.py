"""What a day's scores look like, as materialization metadata: counts per product and role, score histograms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aiml_assets.plots import figure, to_png

BINS = 40


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    per_product_role: dict[str, dict[str, int]]
    histograms: dict[str, tuple[float, list[int]]]  # product -> (upper edge, counts of BINS equal bins from 0)

    def role_share(self, role: str) -> float:
        return sum(r.get(role, 0) for r in self.per_product_role.values()) / self.rows if self.rows else 0.0

    def histogram_png(self, day: date) -> bytes:
        fig, ax = figure(6.5, 4)
        for product, (upper, counts) in sorted(self.histograms.items()):
            width = upper / BINS
            ax.step([width * (i + 0.5) for i in range(BINS)], counts, where="mid", label=product)
        ax.set(xlabel="score", ylabel="customers", title=f"propensity scores {day}", yscale="log")
        ax.legend(fontsize="small")
        return to_png(fig)


def score_summary(scores: DataFrame) -> ScoreSummary:
    """Counts per product and role and a histogram per product: two small Spark jobs."""
    stats = scores.groupBy("product_code", "model_role").agg(F.count(F.lit(1)).alias("n"), F.max("score").alias("top"))
    per_product_role: dict[str, dict[str, int]] = {}
    upper: dict[str, float] = {}
    for row in stats.collect():
        per_product_role.setdefault(row["product_code"], {})[row["model_role"]] = row["n"]
        upper[row["product_code"]] = max(upper.get(row["product_code"], 0.0), row["top"] or 0.0, 1e-6)
    tops = F.create_map(*[item for p, u in upper.items() for item in (F.lit(p), F.lit(u))]) if upper else None
    histograms: dict[str, tuple[float, list[int]]] = {p: (u, [0] * BINS) for p, u in upper.items()}
    if tops is not None:
        bucket = F.least(F.floor(F.col("score") / tops[F.col("product_code")] * BINS), F.lit(BINS - 1)).cast("int")
        for row in scores.groupBy("product_code", bucket.alias("b")).count().collect():
            histograms[row["product_code"]][1][row["b"]] = row["count"]
    rows = sum(n for roles in per_product_role.values() for n in roles.values())
    return ScoreSummary(rows, dict(sorted(per_product_role.items())), histograms)
