"""Data quality: every asset's pandera.pyspark model, enforced by a blocking asset check.

The pandera model is the one source of truth for an asset's columns (types, nullability, ranges, allowed values,
key uniqueness) and also gives the asset's TableSchema metadata. pandera.pyspark validates the schema level itself
(columns present, types) but runs one Spark job per data check; on a 50M-row table that costs more than the
asset. So the model's row rules are compiled into Spark expressions and evaluated together in one aggregation,
and key uniqueness in one key-only group-by. Each violation keeps its rule's condition, so that a failing check can
write the offending rows to its quarantine table (quarantine.py): one more Spark job, only when a rule fails.

Every float column must be finite (no NaN, inf or -inf); its other rules judge only its finite values, so that a
bad row is reported once. Rules beyond pandera's built-in checks live in a column's `metadata`:
  - `{"not_future": True}`: no value after the moment of validation (events cannot be in the future);
  - `{"min_age_at": (column, years)}`: a birth date at least `years` before the row's `column` (age when joining);
  - `{"max_age": years}`: a birth date whose age today (the moment of validation, at or after the data
    horizon) is at most `years`.
A column the model does not declare fails if the model is strict (`Config.strict`), else passes with a warning in
the check's metadata.

Messages and metadata carry assets, columns, rules and counts only: no key or value of any row leaves the data
plane; the rows themselves are found in the quarantine table the message names.
"""


import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date

import pandera.pyspark as pa
from dagster import (
    AssetCheckKey, AssetCheckResult, AssetCheckSpec, AssetKey, Failure, MetadataValue, TableColumn,
    TableColumnConstraints, TableConstraints, TableSchema,
)
from pandera.config import ValidationDepth, config_context
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from aiml_assets.quarantine import check_result, offending_rows, quarantine, quarantine_table
from aiml_assets.settings import Settings


@dataclass(frozen=True)
class Violation:
    column: str
    rule: str
    failed_rows: int | None  # None for schema-level failures (a missing column, a wrong type)
    # TRUE for the failing rows, for the quarantine; None where no row fails (schema level, monthly volume)
    condition: Column | None = field(default=None, compare=False, repr=False)

    def describe(self, total: int) -> str:
        """Counts only: the offending rows are customer data and go to a quarantine table, never into a message."""
        if self.failed_rows is None:
            return f"column {self.column}: {self.rule}"
        return f"column {self.column}: {self.rule} failed for {self.failed_rows} of {total} rows"


Model = type[pa.DataFrameModel] | pa.DataFrameSchema  # a class for fixed columns, a schema object for dynamic ones


def as_schema(model: Model) -> pa.DataFrameSchema:
    return model if isinstance(model, pa.DataFrameSchema) else model.to_schema()


def table_schema(model: Model) -> TableSchema:
    schema = as_schema(model)
    keys = schema.unique or []
    return TableSchema(
        columns=[
            TableColumn(
                name,
                column.dtype.type.simpleString(),
                description=column.description,
                constraints=TableColumnConstraints(nullable=column.nullable, unique=keys == [name],
                                                   other=_rule_texts(name, column)),
            )
            for name, column in schema.columns.items()
        ],
        constraints=TableConstraints(other=[f"unique ({', '.join(keys)})"] if keys else []),
    )


def spark_schema(model: Model) -> T.StructType:
    """The Spark schema a DataFrame built from driver-side rows (pandas) must have to be validated against `model`."""
    return T.StructType([T.StructField(name, column.dtype.type, column.nullable)
                         for name, column in as_schema(model).columns.items()])


def rule_text(check: pa.Check) -> str:
    args = ", ".join(f"{k}={v.isoformat() if isinstance(v, date) else repr(v)}"
                     for k, v in check.statistics.items() if v is not None)
    return f"{check.name}({args})"


def _violated(check: pa.Check, col: Column) -> Column:
    """A pandera built-in check as a Spark condition that is TRUE for the rows violating it."""
    s = check.statistics
    if check.name == "in_range":
        low = (col >= s["min_value"]) if s.get("include_min", True) else (col > s["min_value"])
        high = (col <= s["max_value"]) if s.get("include_max", True) else (col < s["max_value"])
        return ~(low & high)
    rules: dict[str, Callable[[], Column]] = {
        "equal_to": lambda: col != F.lit(s["value"]),
        "not_equal_to": lambda: col == F.lit(s["value"]),
        "greater_than": lambda: col <= F.lit(s["min_value"]),
        "greater_than_or_equal_to": lambda: col < F.lit(s["min_value"]),
        "less_than": lambda: col >= F.lit(s["max_value"]),
        "less_than_or_equal_to": lambda: col > F.lit(s["max_value"]),
        "isin": lambda: ~col.isin(list(s["allowed_values"])),
        "notin": lambda: col.isin(list(s["forbidden_values"])),
        "str_matches": lambda: ~col.rlike(f"^(?:{s['pattern']})"),
        "str_startswith": lambda: ~col.startswith(s["string"]),
    }
    if check.name not in rules:
        raise ValueError(f"pandera check {check.name} has no batched Spark form; add it to quality._violated")
    return rules[check.name]()


def _is_float(dtype) -> bool:
    return isinstance(dtype, (T.DoubleType, T.FloatType))


FINITE = "finite (no NaN, inf or -inf)"


def _not_finite(col: Column) -> Column:
    return F.isnan(col) | (F.abs(col) == float("inf"))


def _rules_beyond_checks(name: str, column: pa.Column) -> list[tuple[str, tuple[str, ...], Callable[[], Column]]]:
    """The rules beyond the column's pandera checks: (text, other columns it reads, condition TRUE when violated).
    The conditions are built lazily: the table schema needs only the texts, and no SparkSession."""
    dtype, meta = column.dtype.type, column.metadata or {}
    rules = []
    if _is_float(dtype):
        rules.append((FINITE, (), lambda: _not_finite(F.col(name))))
    if meta.get("not_future"):
        now = F.current_timestamp if isinstance(dtype, T.TimestampType) else F.current_date
        rules.append(("not in the future", (), lambda: F.col(name) > now()))
    if "min_age_at" in meta:
        at, years = meta["min_age_at"]
        rules.append((f"age at {at} at least {years} years", (at,),
                      lambda: F.add_months(F.col(name), 12 * years) > F.col(at)))
    if "max_age" in meta:
        oldest = meta["max_age"]
        rules.append((f"age today at most {oldest} years", (),
                      lambda: F.add_months(F.col(name), 12 * (oldest + 1)) <= F.current_date()))
    return rules


def _rule_texts(name: str, column: pa.Column) -> list[str]:
    return [rule_text(c) for c in column.checks] + [text for text, _, _ in _rules_beyond_checks(name, column)]


def _conditions(schema: pa.DataFrameSchema, valid_columns: set[str]) -> dict[tuple[str, str], Column]:
    conditions: dict[tuple[str, str], Column] = {}
    for name, column in schema.columns.items():
        if name not in valid_columns:
            continue
        col = F.col(name)
        if not column.nullable:
            conditions[(name, "not_null")] = col.isNull()
        # pandera's checks judge the values that are there: not null and, for floats, finite (FINITE judges those)
        present = col.isNotNull() & ~_not_finite(col) if _is_float(column.dtype.type) else col.isNotNull()
        for check in column.checks:
            conditions[(name, rule_text(check))] = _violated(check, col) & present
        for text, reads, violated in _rules_beyond_checks(name, column):
            if valid_columns.issuperset(reads):
                conditions[(name, text)] = violated()
    return conditions


def extra_columns(model: Model, df: DataFrame) -> list[str]:
    """The columns of `df` that `model` does not declare (a schema drift; no Spark job)."""
    declared = as_schema(model).columns
    return [name for name in df.columns if name not in declared]


def _schema_violations(schema: pa.DataFrameSchema, df: DataFrame) -> list[Violation]:
    """pandera's own schema-level validation: columns present, types. Nullability is left to the batched pass
    (pandera would run a Spark job per column for it), so pandera sees a copy that allows nulls and no rows."""
    structure = schema.update_columns({name: {"nullable": True} for name in schema.columns})
    structure.strict = False  # extra columns are reported by validate, by name (pandera names the schema instead)
    try:
        with config_context(validation_depth=ValidationDepth.SCHEMA_ONLY):
            validated = structure.validate(df.limit(0))
    except TypeError as exc:  # pandera cannot even map a column's type (e.g. an all-null NullType column)
        actual = dict((f.name, f.dataType) for f in df.schema.fields)
        return [Violation(name, f"dtype: expected {column.dtype.type}, got {actual.get(name)} ({exc})", None)
                for name, column in schema.columns.items() if actual.get(name) != column.dtype.type]
    violations = []
    for reasons in validated.pandera.errors.get("SCHEMA", {}).values():
        for error in reasons:
            detail = re.sub(r" (Row\(.*|None)$", "", str(error["error"]), flags=re.S)  # pandera appends a row
            violations.append(Violation(error["column"], f"{error['check']}: {detail}", None))
    return violations


def repeated(columns: list[str]) -> Column:
    """TRUE for every row but one of each value of `columns` (a window: select it, it cannot filter)."""
    return F.row_number().over(Window.partitionBy(*columns).orderBy(*columns)) > 1


def validate(model: Model, df: DataFrame) -> tuple[int, list[Violation]]:
    """Row count and every violation of `model` in `df`.

    Two Spark jobs: one aggregation for every row rule, and one key-only group-by for uniqueness (a distinct
    count inside the big aggregation would make Spark expand every row).
    """
    schema = as_schema(model)
    violations = _schema_violations(schema, df)
    if schema.strict:
        violations += [Violation(name, "not in the schema: an unexpected column (strict)", None)
                       for name in extra_columns(schema, df)]
    expected = {name: column.dtype.type for name, column in schema.columns.items()}
    valid = {f.name for f in df.schema.fields if f.name in expected and f.dataType == expected[f.name]}
    conditions = _conditions(schema, valid)
    keys = [k for k in (schema.unique or []) if k in valid]
    aggregates = [F.count(F.lit(1)).alias("rows")]
    aggregates += [F.sum(F.when(cond, 1).otherwise(0)).alias(f"c{i}") for i, cond in enumerate(conditions.values())]
    totals = df.agg(*aggregates).first()
    rows = totals["rows"]
    if rows == 0:
        violations.append(Violation("(all)", "not empty: the table has no rows", None))
    for i, ((column, rule), cond) in enumerate(conditions.items()):
        if failed := totals[f"c{i}"] or 0:
            violations.append(Violation(column, rule, failed, cond))
    if keys and rows:
        duplicates = df.groupBy(*keys).agg(F.count(F.lit(1)).alias("n")).filter("n > 1")
        if extra := duplicates.agg(F.sum(F.col("n") - 1)).first()[0]:
            violations.append(Violation(",".join(keys), "unique", extra, repeated(keys)))
    return rows, violations


def check_name(model: Model) -> str:
    return f"{as_schema(model).name}_schema"


def schema_check_spec(asset: AssetKey, model: Model, settings: Settings | None = None, **kwargs) -> AssetCheckSpec:
    """The blocking check enforcing `model` on `asset`, declared on the asset so that its own step evaluates it
    (`schema_check`): visible and separately named in the UI, and a failure stops everything downstream."""
    table = quarantine_table(settings, asset, check_name(model)) if settings else None
    return AssetCheckSpec(check_name(model), asset=asset, blocking=True,
                          description=f"pandera schema {as_schema(model).name}: types, nullability, finite numbers, "
                          "ranges, allowed values, unique keys, unexpected columns"
                          + ("; failing rows go to " + table.name if table else ""), **kwargs)


def refuse_unchecked(assets: Collection[AssetKey], checks: Collection[AssetCheckKey], specs: list[AssetCheckSpec],
                     *, checks_alone: bool = False) -> None:
    """A selected asset is written only with its blocking checks, since they run in its step; and unless the step
    can check what an earlier run wrote (`checks_alone`), a check is not selected without its asset, which would
    judge something this step did not make. Either is refused before any work, naming each."""
    wrong = []
    for spec in specs:
        asset = spec.asset_key.to_user_string()
        if spec.blocking and spec.asset_key in assets and spec.key not in checks:
            wrong.append(f"{asset} selected without its blocking check {spec.name}")
        elif not checks_alone and spec.key in checks and spec.asset_key not in assets:
            wrong.append(f"check {spec.name} selected without {asset}, whose step it checks")
    if wrong:
        raise Failure(description="refused: " + "; ".join(wrong) + "; select the checks with their asset "
                      "(nothing was written)", allow_retries=False)


def schema_check(log, io, asset: AssetKey, model: Model, df: DataFrame, settings: Settings | None = None,
                 partition: str | None = None, failed: str = "its pandera schema") -> AssetCheckResult:
    """The result of `schema_check_spec(asset, model)` on `df`: with `settings`, the failing rows go to the check's
    quarantine table (written with `io`, an asset_tables.TableAccess); without, counts only."""
    name = as_schema(model).name
    rows, violations = validate(model, df)
    metadata = {"rows": MetadataValue.int(rows)}
    drift = extra_columns(model, df)
    if drift and not as_schema(model).strict:  # strict: validate reported them as violations
        warning = (f"{asset.to_user_string()}: {len(drift)} column(s) not in pandera schema {name}: "
                   f"{', '.join(drift)}; passed with this warning (the schema is not strict)")
        log.warning(warning)
        metadata |= {"extra_columns": MetadataValue.text(", ".join(drift)), "warning": MetadataValue.text(warning)}
    table = quarantine_table(settings, asset, check_name(model)) if settings else None
    quarantined = quarantine(io, table, offending_rows(df, violations, partition)) if table else None
    return check_result(log, asset, failed, [v.describe(rows) for v in violations], metadata, quarantined,
                        check=check_name(model))
