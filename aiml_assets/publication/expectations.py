"""The CDP's publish gate: a great-expectations 1.x suite run on the staged version (a Spark DataFrame), with Data
Docs written under the AIML home. Called directly: dagster-ge does not support great-expectations 1.x."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame

from aiml_assets.inference.schemas import CANARY_ROLE, CHAMPION_ROLE

SUITE = "nba_propensity_publish_gate"
KEY = ["customer_id", "product_code", "snapshot_date"]


@dataclass(frozen=True)
class GateResult:
    success: bool
    failures: list[str]
    data_docs: str


def suite(columns: list[str], products: list[str], expected_rows: int):
    import great_expectations as gx

    expectations = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
        gx.expectations.ExpectTableRowCountToEqual(value=expected_rows),
        gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=KEY),
        gx.expectations.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
        gx.expectations.ExpectColumnValuesToBeBetween(column="model_version", min_value=1),
        gx.expectations.ExpectColumnValuesToBeInSet(column="product_code", value_set=products),
        gx.expectations.ExpectColumnValuesToBeInSet(column="model_role", value_set=[CHAMPION_ROLE, CANARY_ROLE]),
        *[gx.expectations.ExpectColumnValuesToNotBeNull(column=c) for c in columns],
    ]
    return gx.ExpectationSuite(name=SUITE, expectations=expectations)


def _describe(result) -> str:
    config = result.expectation_config
    args = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    observed = result.result.get("observed_value", result.result.get("unexpected_count"))
    return f"{config.type}({args}): observed {observed}"


def run_publish_gate(staged: DataFrame, *, columns: list[str], products: list[str], expected_rows: int,
                     project_root: Path, run_name: str) -> GateResult:
    """Validate `staged` against the suite; Data Docs go to `project_root`/gx/uncommitted/data_docs. Results keep
    counts, never example values: no customer key reaches the Data Docs."""
    import great_expectations as gx  # here, not at module level: it adds ~2.7 s to every code-location load
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(project_root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_or_update_spark("cdp_staging")
             .add_dataframe_asset("nba_propensity").add_batch_definition_whole_dataframe("staged_version"))
    validation = context.validation_definitions.add_or_update(gx.ValidationDefinition(
        name=f"{SUITE}_validation", data=batch,
        suite=context.suites.add_or_update(suite(columns, products, expected_rows))))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=f"{SUITE}_checkpoint", validation_definitions=[validation],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
        result_format={"result_format": "BASIC", "partial_unexpected_count": 0}))
    outcome = checkpoint.run(batch_parameters={"dataframe": staged}, run_id=gx.core.run_identifier.RunIdentifier(
        run_name=run_name))
    failures = [_describe(r) for run in outcome.run_results.values() for r in run.results if not r.success]
    docs = context.get_docs_sites_urls()
    return GateResult(outcome.success, failures, docs[0]["site_url"] if docs else "")
