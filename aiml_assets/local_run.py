"""`aiml run-local`: the whole graph on the local instance, in the order the HLD draws it.

What it runs follows the seeded EDP data, never the calendar: the snapshots are the latest whose label window the
data completes, the scoring day is the day after the data ends. Like prod, where a product without a new champion
keeps its old one, one product's failed gate does not stop the others: they are promoted, scored and published,
and the summary says which product was left out and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from dagster import DagsterInstance, execute_job, reconstructable
from tabulate import tabulate

from aiml_assets.cli import LOCAL_CHANGE_REQUEST, prepare_instance, promote_reason
from aiml_assets.definitions import (
    MODELS_JOB, SCORING_JOB, main_job_for_current_env, models_job_for_current_env, scoring_job_for_current_env,
)
from aiml_assets.inference.assets import SCORES_KEY
from aiml_assets.inference.deployment import DeploymentRefused, deployments
from aiml_assets.keys import BINARY_KEY, MODEL_KEY
from aiml_assets.publication.cdp import CDP_KEY
from aiml_assets.resources.per_environment import build_resources
from aiml_assets.settings import Settings, load_settings
from aiml_assets.sources.edp import TRANSACTIONS
from aiml_assets.sources.horizon import (
    DataHorizon, DataHorizonExceeded, labelled_snapshots, observed_horizon, scoring_partition,
)

PUBLISHED_ALREADY = "same scores as the published version"  # a rerun on the same inputs: the CDP is current


@dataclass(frozen=True)
class Plan:
    """What a default local run picks from the data."""
    data_ends: date
    snapshots: list[str]
    scoring_day: str

    def tags(self) -> dict[str, str]:
        """The snapshots as one partition-range run (the lab assets' backfill policy)."""
        return {"dagster/asset_partition_range_start": self.snapshots[0],
                "dagster/asset_partition_range_end": self.snapshots[-1]}


@dataclass
class ProductOutcome:
    roc_auc: float | None = None
    gate: str = "not run"
    reason: str = ""
    promoted: str = "no"
    scored_rows: int = 0


def plan(settings: Settings, horizon: DataHorizon, today: date, main_partitions, scoring_partitions) -> Plan:
    """The latest `main_job_snapshots` snapshots whose label window the data completes, and the day after it ends,
    among the partitions that exist on `today`."""
    snapshots = labelled_snapshots(main_partitions, horizon, window_days=settings.features.label_window_days,
                                   count=settings.features.main_job_snapshots, today=today)
    return Plan(horizon.last_event_day, snapshots, scoring_partition(scoring_partitions, horizon, today))


def local_horizon(resources: dict) -> DataHorizon:
    return observed_horizon(resources["catalog"].read(resources["spark"].get_session(), TRANSACTIONS))


def _outcome(run) -> str:
    return "succeeded" if run.success else "FAILED"


def _first_failure(run) -> str:
    failures = run.get_step_failure_events()
    if not failures:
        return "the run failed"
    error = failures[0].step_failure_data.error
    return f"{failures[0].step_key}: {error.message.strip().splitlines()[0] if error else 'failed'}"


def _model_outcome(run, product: str) -> tuple[ProductOutcome, int | None]:
    """The product's validation ROC AUC, gate verdict and reason, and the version to promote (None if none), from
    the family run's events for its partition."""
    outcome = ProductOutcome()
    for event in run.get_asset_materialization_events():
        metadata = event.materialization.metadata
        if event.asset_key == MODEL_KEY and event.partition == product and "roc_auc" in metadata:
            outcome.roc_auc = metadata["roc_auc"].value
    published = any(e.asset_key == BINARY_KEY and e.partition == product for e in run.get_asset_materialization_events())
    gates = [e for e in run.get_asset_check_evaluations() if e.check_name == "validation_gate" and e.partition == product]
    if not gates:
        outcome.reason = _failure_of(run, product)
        return outcome, None
    gate = gates[0]
    outcome.gate = "passed" if gate.passed else "failed"
    headline = (gate.description or "").splitlines()[0]
    outcome.reason = headline.split("FAILED: ", 1)[1] if "FAILED: " in headline else ""
    if gate.passed and not published:
        outcome.reason = _failure_of(run, product)  # e.g. the Nexus publication after the gate
        return outcome, None
    return outcome, gate.metadata["model_version"].value if gate.passed else None


def _failure_of(run, product: str) -> str:
    """Why the family step failed `product` (its `failed_products` entry), else the run's first failure."""
    for failure in run.get_step_failure_events():
        data = failure.step_failure_data.user_failure_data
        failed = data.metadata.get("failed_products") if data is not None else None
        if failed is not None and product in failed.value:
            return failed.value[product]
    return _first_failure(run)


def train_the_family(instance, settings: Settings) -> dict[str, tuple[ProductOutcome, int | None]]:
    """Every product in one run (the models' single-run backfill): one step trains them all."""
    run = execute_job(reconstructable(models_job_for_current_env), instance=instance, tags={
        "dagster/asset_partition_range_start": settings.products[0],
        "dagster/asset_partition_range_end": settings.products[-1]})
    print(f"{MODELS_JOB} run {run.run_id} for {len(settings.products)} products: {_outcome(run)}")
    return {product: _model_outcome(run, product) for product in settings.products}


def promote_passed(outcomes: dict[str, tuple[ProductOutcome, int | None]]) -> None:
    """Each gated version, to UAT and on to prod's champion, under the local change request."""
    for product, (outcome, version) in outcomes.items():
        if version is None:
            continue
        for target in ("uat", "prod"):
            if reason := promote_reason(product, version, LOCAL_CHANGE_REQUEST, target, None):
                outcome.reason = f"promotion to {target}: {reason}"
                break
        else:
            outcome.promoted = f"version {version}"


def _scores_per_product(run) -> tuple[dict[str, int], str | None]:
    """Rows scored per product, and whether the CDP now serves this day (None) or why not."""
    rows, published = {}, "the CDP was not published: " + (_first_failure(run) if not run.success else "no CDP asset")
    for event in run.get_asset_materialization_events():
        metadata = event.materialization.metadata
        if event.asset_key == SCORES_KEY:
            rows = {p: sum(by_role.values()) for p, by_role in metadata["rows_per_product_and_role"].value.items()}
        if event.asset_key == CDP_KEY:
            reason = metadata["reason"].value if "reason" in metadata else None
            published = None if metadata["published"].value or reason == PUBLISHED_ALREADY else \
                f"the CDP was not published: {reason}"
    return rows, published


def summary_table(outcomes: dict[str, ProductOutcome]) -> str:
    return tabulate([[p, "-" if o.roc_auc is None else f"{o.roc_auc:.4f}", o.gate, o.reason or "-", o.promoted,
                      o.scored_rows] for p, o in outcomes.items()],
                    headers=["product", "validation ROC AUC", "gate", "reason", "promoted", "scored rows"])


def run_local(today: date) -> str | None:
    """The whole graph for what the data holds. None when the CDP serves this run's scoring day, else why not."""
    settings = load_settings()
    try:
        chosen = plan(settings, local_horizon(build_resources(settings)), today,
                      main_job_for_current_env().partitions_def, scoring_job_for_current_env().partitions_def)
    except DataHorizonExceeded as exc:
        return f"nothing to run: {exc}"
    print(f"the EDP data ends {chosen.data_ends}: snapshots {', '.join(chosen.snapshots)} (complete "
          f"{settings.features.label_window_days}-day label windows), scoring day {chosen.scoring_day}")
    prepare_instance()
    with DagsterInstance.get() as instance:
        main = execute_job(reconstructable(main_job_for_current_env), instance=instance, tags=chosen.tags())
        print(f"main job run {main.run_id} for snapshots {chosen.snapshots[0]}..{chosen.snapshots[-1]}: "
              f"{_outcome(main)}")
        if not main.success:
            return f"the main job failed ({_first_failure(main)}): nothing downstream ran"
        trained = train_the_family(instance, settings)
    promote_passed(trained)
    outcomes = {product: outcome for product, (outcome, _) in trained.items()}
    source = settings.inference.deploys_from
    try:  # the scoring job's own rule: at least one product with a champion
        deployments(build_resources(settings)["release_manifest"].read(source), settings.products, source)
    except DeploymentRefused as exc:
        print(summary_table(outcomes))
        return f"every gate failed or no promotion succeeded: {exc}"
    with DagsterInstance.get() as instance:
        run = execute_job(reconstructable(scoring_job_for_current_env), instance=instance,
                          tags={"dagster/partition": chosen.scoring_day})
        print(f"{SCORING_JOB} run {run.run_id} for {chosen.scoring_day}: {_outcome(run)}")
    rows, not_published = _scores_per_product(run)
    for product, outcome in outcomes.items():
        outcome.scored_rows = rows.get(product, 0)
    print(summary_table(outcomes))
    return not_published
