"""Write-audit-publish for an asset's partitions: the asset's own step validates what it is about to write against
its pandera model (quality.validate), and writes only once every partition passed. Used where a failed check must
leave the current partitions current (the lab's features and training sets), not only stop what comes after.
A failure writes the offending rows of every staged partition to the check's quarantine table instead."""

from __future__ import annotations

from collections.abc import Generator

from dagster import AssetCheckResult, AssetCheckSpec, AssetKey, Failure, MetadataValue
from pyspark.sql import DataFrame

from aiml_assets.asset_tables import TableAccess
from aiml_assets.quality import Model, check_name, schema_check_spec, validate
from aiml_assets.quarantine import check_result, combined, offending_rows, quarantine, quarantine_table
from aiml_assets.settings import Settings


def audit_spec(asset: AssetKey, model: Model, settings: Settings) -> AssetCheckSpec:
    spec = schema_check_spec(asset, model, settings)
    return spec._replace(description=spec.description + "; audited in the asset's step before anything is written, "
                         "so a failure leaves its current partitions current")


def audited(log, io: TableAccess, asset: AssetKey, model: Model, staged: dict[object, DataFrame],
            settings: Settings) -> Generator[AssetCheckResult, None, AssetCheckResult]:
    """The passing check result of every staged partition (for the materialization to carry), or: the failing
    result is recorded and the step fails, before anything is written but the quarantine."""
    counts, failures, offending = {}, [], []
    for partition, df in staged.items():
        rows, violations = validate(model, df)
        counts[str(partition)] = rows
        failures += [f"partition {partition}: {violation.describe(rows)}" for violation in violations]
        offending.append(offending_rows(df, violations, str(partition)))
    metadata = {"rows": MetadataValue.int(sum(counts.values())), "rows_per_partition": MetadataValue.json(counts)}
    quarantined = quarantine(io, quarantine_table(settings, asset, check_name(model)), combined(offending))
    result = check_result(log, asset, "its pandera schema; nothing was written and its current partitions stay "
                          "current", failures, metadata, quarantined, check=check_name(model))
    if result.passed:
        return result
    yield result
    raise Failure(result.description)
