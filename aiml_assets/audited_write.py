"""Write-audit-publish for an asset's partitions: the asset's own step validates what it is about to write against
its pandera model (quality.validate), and writes only once every partition passed. Used where a failed check must
leave the current partitions current (the lab's features and training sets), not only stop what comes after."""

from __future__ import annotations

from collections.abc import Generator

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, Failure, MetadataValue
from pyspark.sql import DataFrame

from aiml_assets.quality import Model, as_schema, validate


def audit_spec(asset: AssetKey, model: Model) -> AssetCheckSpec:
    name = as_schema(model).name
    return AssetCheckSpec(f"{name}_schema", asset=asset, blocking=True,
                          description=f"pandera schema {name}, audited in the asset's step before anything is "
                          "written: types, nullability, ranges, allowed values, unique keys")


def audited(context, asset: AssetKey, model: Model,
            staged: dict[object, DataFrame]) -> Generator[AssetCheckResult, None, AssetCheckResult]:
    """The passing check result of every staged partition (for the materialization to carry), or: the failing
    result is recorded and the step fails, before anything is written."""
    counts, failures = {}, []
    for partition, df in staged.items():
        rows, violations = validate(model, df)
        counts[str(partition)] = rows
        failures += [f"partition {partition}: {violation.describe(rows, examples=False)}" for violation in violations]
    metadata = {"rows": MetadataValue.int(sum(counts.values())), "violations": MetadataValue.int(len(failures)),
                "rows_per_partition": MetadataValue.json(counts)}
    if not failures:
        return AssetCheckResult(passed=True, metadata=metadata)
    message = (f"{asset.to_user_string()} failed its pandera schema; nothing was written and its current "
               "partitions stay current:\n  " + "\n  ".join(failures))
    context.log.error(message)
    yield AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description=message,
                           metadata={**metadata, "failures": MetadataValue.md("\n".join(f"- {f}" for f in failures))})
    raise Failure(message)
