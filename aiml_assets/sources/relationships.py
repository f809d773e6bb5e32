"""Rules across the rows and products of the EDP sources, declared as data beside their pandera models (schemas.py):
referential integrity, event order, natural keys beyond a model's own, and monthly volume (volume.py).

  References(child, column, parent, parent_column): every child.column that is set resolves in the parent;
  NotBefore(child, column, parent, parent_column): child.column is not before the referenced parent row's
      parent_column (the parent is joined through the child's References to it);
  Ordered(table, earlier, later): within a row, `later`, when set, is not before `earlier`;
  Unique(table, columns): a natural key beyond the model's own `unique` one, over the whole product;
  MonthlyVolume(product, column, dense): complete months of steady volume (volume.py).

Compiled per child product into one blocking check, evaluated in the observation's step (edp.py), and one Spark
job: the child left-joined to each parent it references (the parent's key and the columns its rules need, one row
per key), a window per natural key, and one aggregation grouped by the month of the child's event time that counts
each rule's failing rows and the month's rows. Summed, the counts are the rules'; per month, they are the volume's.
Products other than transactions cost one more small job: the data horizon (the latest transaction), which says
which months are complete.

Messages and metadata carry products, columns, rules, months and counts only: no key or value of any row, so that
customer ids never reach Dagster's event log; a failing rule's rows (the child's own columns) go to the check's
quarantine table in the data plane (quarantine.py), one more Spark job only when a rule fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cache

from dagster import AssetCheckResult, AssetCheckSpec, MetadataValue
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from aiml_assets.asset_tables import TableAccess
from aiml_assets.quality import Violation, as_schema, repeated
from aiml_assets.quarantine import Offending, check_result, offending_rows, quarantine, quarantine_table
from aiml_assets.settings import Settings
from aiml_assets.sources.horizon import HORIZON_COLUMN, DataHorizon, DataHorizonExceeded, horizon_of, observed_horizon
from aiml_assets.sources.schemas import SOURCE_MODELS, asset_key
from aiml_assets.sources.volume import MonthlyVolume, complete_months, read_window, volume_violations

CUSTOMERS, TRANSACTIONS, HOLDINGS, RESPONSES = SOURCE_MODELS
CHECK_NAME = "relationships_and_volume"


@dataclass(frozen=True)
class _Across:
    """A rule from a column of a child product to a column of a parent product."""

    child: str
    column: str
    parent: str
    parent_column: str

    @property
    def product(self) -> str:
        return self.child


class References(_Across):
    @property
    def rule(self) -> str:
        return f"references {self.parent}.{self.parent_column}"


class NotBefore(_Across):
    @property
    def rule(self) -> str:
        return f"not before {self.parent}.{self.parent_column}"


@dataclass(frozen=True)
class _Within:
    """A rule across the rows of one product."""

    table: str

    @property
    def product(self) -> str:
        return self.table


@dataclass(frozen=True)
class Ordered(_Within):
    earlier: str
    later: str

    @property
    def rule(self) -> str:
        return f"not before {self.earlier}"


@dataclass(frozen=True)
class Unique(_Within):
    columns: tuple[str, ...]


RELATIONSHIPS = (
    References(TRANSACTIONS, "customer_id", CUSTOMERS, "customer_id"),
    References(HOLDINGS, "customer_id", CUSTOMERS, "customer_id"),
    References(RESPONSES, "customer_id", CUSTOMERS, "customer_id"),
    NotBefore(TRANSACTIONS, "transaction_ts", CUSTOMERS, "joined_date"),
    NotBefore(HOLDINGS, "opened_date", CUSTOMERS, "joined_date"),
    NotBefore(RESPONSES, "contact_date", CUSTOMERS, "joined_date"),
    Ordered(HOLDINGS, "opened_date", "closed_date"),
    Ordered(RESPONSES, "contact_date", "response_date"),
    Unique(RESPONSES, ("campaign_id", "customer_id")),  # one contact per campaign and customer (edp/seed.py)
)
VOLUMES = {volume.product: volume for volume in (
    MonthlyVolume(TRANSACTIONS, "transaction_ts", dense=True),
    MonthlyVolume(HOLDINGS, "opened_date", dense=True),  # openings
    MonthlyVolume(RESPONSES, "contact_date", dense=False),  # contacts
)}


def _of(kind: type, product: str) -> list:
    return [r for r in RELATIONSHIPS if isinstance(r, kind) and r.product == product]


def _check_declarations() -> None:
    for before in (r for r in RELATIONSHIPS if isinstance(r, NotBefore)):
        if not any(ref.parent == before.parent for ref in _of(References, before.child)):
            raise ValueError(f"{before}: {before.child} has no References to {before.parent} to join it through")


_check_declarations()
CHILDREN = [name for name in SOURCE_MODELS if _of(References, name)]


@dataclass(frozen=True)
class Outcome:
    rows: int
    violations: list[Violation]
    months: list[date]  # the months whose volume was judged
    offending: Offending | None = None  # the rows failing a rule, for the quarantine


def _parent(ref: References, read: Callable[[str], DataFrame], prefix: str) -> DataFrame:
    """One row per parent key (the earliest of each column a rule needs), so the join never multiplies child rows."""
    needed = sorted({b.parent_column for b in _of(NotBefore, ref.child) if b.parent == ref.parent})
    return read(ref.parent).groupBy(F.col(ref.parent_column).alias(f"{prefix}key")).agg(
        F.lit(True).alias(f"{prefix}found"), *(F.min(c).alias(prefix + c) for c in needed))


def _compiled(child: str, read: Callable[[str], DataFrame]) -> tuple[DataFrame, list[tuple[str, str, Column]]]:
    """`child` joined to its parents, and each rule as (column, rule, condition TRUE for a failing row)."""
    df, rules = read(child), []
    for i, ref in enumerate(_of(References, child)):
        prefix = f"_parent{i}_"
        parent = _parent(ref, read, prefix)
        df = df.join(parent, df[ref.column] == parent[f"{prefix}key"], "left")
        rules.append((ref.column, ref.rule, F.col(ref.column).isNotNull() & F.col(f"{prefix}found").isNull()))
        rules += [(b.column, b.rule, F.col(b.column) < F.col(prefix + b.parent_column))
                  for b in _of(NotBefore, child) if b.parent == ref.parent]
    rules += [(o.later, o.rule, F.col(o.later) < F.col(o.earlier)) for o in _of(Ordered, child)]
    for i, key in enumerate(_of(Unique, child)):
        columns = list(key.columns)
        df = df.withColumn(f"_repeat{i}", repeated(columns))
        rules.append((",".join(columns), "unique", F.col(f"_repeat{i}")))
    return df, rules


def _needed_columns(child: str) -> set[tuple[str, str]]:
    """(product, column) of every column `child`'s rules read."""
    joins = _of(References, child) + _of(NotBefore, child)
    needed = {(child, r.column) for r in joins} | {(r.parent, r.parent_column) for r in joins}
    needed |= {(child, c) for o in _of(Ordered, child) for c in (o.earlier, o.later)}
    return needed | {(child, c) for u in _of(Unique, child) for c in u.columns} | {(child, VOLUMES[child].column)}


def _unusable_columns(child: str, read: Callable[[str], DataFrame]) -> list[Violation]:
    """Columns the rules need that are missing or mistyped (the pandera check names them): these rules cannot run."""
    unusable = []
    for product, column in sorted(_needed_columns(child)):
        expected = as_schema(SOURCE_MODELS[product]).columns[column].dtype.type
        if {f.name: f.dataType for f in read(product).schema.fields}.get(column) != expected:
            unusable.append(Violation(column, f"missing or not {expected.simpleString()} in {product}: the "
                                      "relationship and volume rules cannot run", None))
    return unusable


def _horizon(child: str, latest, read: Callable[[str], DataFrame]) -> DataHorizon:
    return horizon_of(latest) if VOLUMES[child].column == HORIZON_COLUMN else observed_horizon(read(TRANSACTIONS))


def evaluate(child: str, read: Callable[[str], DataFrame], settings: Settings, tags: Mapping[str, str]) -> Outcome:
    """Every relationship and volume rule of `child` (an EDP product name), reading products with `read`."""
    read = cache(read)
    if unusable := _unusable_columns(child, read):
        return Outcome(0, unusable, [])
    volume = VOLUMES[child]
    df, rules = _compiled(child, read)
    monthly = df.groupBy(F.trunc(F.col(volume.column), "month").alias("month")).agg(
        F.count(F.lit(1)).alias("rows"), F.max(volume.column).alias("latest"),
        *(F.count(F.when(condition, 1)).alias(f"rule{i}") for i, (_, _, condition) in enumerate(rules)),
    ).collect()
    rows = sum(m["rows"] for m in monthly)
    violations = [Violation(column, rule, failed, condition) for i, (column, rule, condition) in enumerate(rules)
                  if (failed := sum(m[f"rule{i}"] for m in monthly))]
    offending = offending_rows(df, violations, columns=read(child).columns)
    try:
        horizon = _horizon(child, max((m["latest"] for m in monthly if m["latest"]), default=None), read)
    except DataHorizonExceeded as exc:
        return Outcome(rows, violations + [Violation(volume.column, f"monthly volume: {exc}", None)], [], offending)
    window = read_window(settings, horizon, tags)
    months = complete_months(window, horizon) if window else []
    rows_by_month = {m["month"]: m["rows"] for m in monthly if m["month"]}
    violations += volume_violations(volume, rows_by_month, months, settings.sources.volume_band)
    return Outcome(rows, violations, months, offending)


def _description(child: str, settings: Settings) -> str:
    rules = [f"{r.column} {r.rule}" for r in _of(References, child) + _of(NotBefore, child)]
    rules += [f"{o.later} {o.rule}" for o in _of(Ordered, child)]
    rules += [f"({', '.join(u.columns)}) unique" for u in _of(Unique, child)]
    volume = VOLUMES[child]
    kind = (f"every month has rows within {list(settings.sources.volume_band)}x its neighbours' median"
            if volume.dense else "no two months running without rows")
    return "; ".join(rules) + f"; monthly volume of {volume.column} over the months the lab snapshots read: {kind}"


def relationship_check_specs(settings: Settings) -> list[AssetCheckSpec]:
    """One blocking check per child product, evaluated in the observation's step (`relationship_check`)."""
    return [AssetCheckSpec(CHECK_NAME, asset=asset_key(child), blocking=True,
                           description=f"{_description(child, settings)}; failing rows go to "
                           f"{quarantine_table(settings, asset_key(child), CHECK_NAME).name}",
                           additional_deps=[asset_key(ref.parent) for ref in _of(References, child)])
            for child in CHILDREN]


def relationship_check(log, io: TableAccess, child: str, read: Callable[[str], DataFrame], settings: Settings,
                       tags: Mapping[str, str]) -> AssetCheckResult:
    """The result of `child`'s relationship check, reading products with `read`; its failing rows go to the
    check's quarantine table (written with `io`)."""
    asset = asset_key(child)
    outcome = evaluate(child, read, settings, tags)
    judged = f"{outcome.months[0]:%Y-%m} to {outcome.months[-1]:%Y-%m}" if outcome.months else "none"
    metadata = {"rows": MetadataValue.int(outcome.rows), "months_judged": MetadataValue.text(judged)}
    quarantined = quarantine(io, quarantine_table(settings, asset, CHECK_NAME), outcome.offending)
    return check_result(log, asset, "its relationship and volume rules",
                        [v.describe(outcome.rows) for v in outcome.violations], metadata, quarantined,
                        check=CHECK_NAME)
