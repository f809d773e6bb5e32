"""`aiml`: the local platform's commands (seed the local EDP, run the main job, promote a model version, prepare
the Dagster instance)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import date, timedelta
from pathlib import Path

from aiml_assets.settings import DEPLOYMENTS_DIR, PROJECT_ROOT, aiml_home, current_env, load_settings


def prepare_instance() -> Path:
    """A local Dagster home (DAGSTER_HOME, default ./.dagster_home) with the local dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(DEPLOYMENTS_DIR / "dagster" / "local" / "dagster.yaml", home / "dagster.yaml")
    return home


def seed(customers: int, seed_value: int, end_date: date) -> dict[str, int]:
    from aiml_assets.edp.seed import seed_edp
    from aiml_assets.resources.catalog import LocalCatalog

    settings = load_settings()
    if not settings.is_local:
        raise SystemExit(f"seed-edp writes the local EDP stand-in; AIML_ENV={settings.environment} reads the real EDP")
    catalog = LocalCatalog(home=str(aiml_home()))
    return seed_edp(catalog, customers=customers, seed=seed_value, end_date=end_date, products=settings.products)


def main_job_tags() -> dict[str, str]:
    """The latest `main_job_snapshots` snapshots, as one partition-range run (the assets' backfill policy)."""
    from aiml_assets.definitions import main_job_for_current_env

    settings = load_settings()
    partitions = main_job_for_current_env().partitions_def
    if partitions is None or settings.features is None:
        return {}
    keys = partitions.get_partition_keys()[-settings.features.main_job_snapshots:]
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


# The change request id of local promotions: local versions only ever reach the manifests' copies under the AIML
# home, and no real ServiceNow change has this number.
LOCAL_CHANGE_REQUEST = "CHG0000000"


def _outcome(run) -> str:
    return "succeeded" if run.success else "FAILED"


def run_main_job(scoring_day: date) -> bool:
    """The whole graph, in the order the HLD draws it: the main job for the latest snapshots; one models run per
    product (a product whose model fails its gate does not stop the others); each gated challenger promoted through
    UAT to prod under the local change request; then the daily scoring job for `scoring_day`, which publishes the
    CDP."""
    from dagster import DagsterInstance, execute_job, reconstructable

    from aiml_assets.definitions import (
        MODELS_JOB, SCORING_JOB, main_job_for_current_env, models_job_for_current_env, scoring_job_for_current_env,
    )
    from aiml_assets.models.assets import GROUP as MODEL_GROUP

    prepare_instance()
    tags = main_job_tags()
    settings = load_settings()
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(main_job_for_current_env), instance=instance, tags=tags)
        scope = f" for snapshots {tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}" if tags else ""
        print(f"main job run {result.run_id}{scope}: {_outcome(result)}")
        if not result.success or MODEL_GROUP not in settings.asset_groups:
            return result.success
        trained = {}
        for product in settings.products:
            run = execute_job(reconstructable(models_job_for_current_env), instance=instance,
                              tags={"dagster/partition": product})
            trained[product] = run.success
            print(f"{MODELS_JOB} run {run.run_id} for {product}: {_outcome(run)}")
    if not all(trained.values()) or "prod_inference" not in settings.asset_groups:
        return all(trained.values())
    if not promote_challengers(settings):
        return False
    with DagsterInstance.get() as instance:
        run = execute_job(reconstructable(scoring_job_for_current_env), instance=instance,
                          tags={"dagster/partition": scoring_day.isoformat()})
        print(f"{SCORING_JOB} run {run.run_id} for {scoring_day}: {_outcome(run)}")
        return run.success


def record_local_materializations() -> int:
    """Every materialization on the local instance that the local audit log lacks (the audit sensor is off locally,
    like the schedules)."""
    from dagster import DagsterInstance

    from aiml_assets.governance.audit_trail import record_materializations
    from aiml_assets.resources.per_environment import build_resources

    settings = load_settings()
    audit = build_resources(settings)["audit"]
    prepare_instance()
    cursor, total = 0, 0
    with DagsterInstance.get() as instance:
        while True:
            after, recorded = record_materializations(instance, audit, settings.environment, after=cursor)
            if after == cursor:
                return total
            cursor, total = after, total + recorded


def promote_challengers(settings) -> bool:
    """Each product's challenger, to UAT and on to prod's champion, under the local change request."""
    from aiml_assets.models.registry import CHALLENGER, alias_version
    from aiml_assets.models.training import registered_name
    from aiml_assets.resources.per_environment import build_resources

    client = build_resources(settings)["mlflow"].client()
    for product in settings.products:
        version = alias_version(client, registered_name(settings.catalog.aiml_catalog, product), CHALLENGER)
        for target in ("uat", "prod"):
            if not promote(product, version, LOCAL_CHANGE_REQUEST, target, None):
                return False
    return True


def promote(product: str, version: int, change_request: str, target: str, resources_dir: Path | None,
            role: str = "champion") -> bool:
    """Run the promote_model job on the local Dagster instance and print its outcome."""
    from dagster import DagsterInstance

    from aiml_assets.governance.audit import actor
    from aiml_assets.models.promotion import failure_reason, promotion_job, promotion_resources, promotion_run_config

    settings = load_settings()
    job = promotion_job(settings, promotion_resources(settings, resources_dir))
    tags = {"aiml/requested_by": actor(), **({"aiml/change_request": change_request} if change_request else {})}
    prepare_instance()
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(run_config=promotion_run_config(product, version, change_request, target, role),
                                        instance=instance, tags=tags, raise_on_error=False)
    if result.success:
        entry = result.output_for_node("promote")
        print(f"{job.name} run {result.run_id}: {entry['name']} version {entry['version']} promoted to {target}"
              f"{' as challenger (canary)' if target == 'prod' and role == 'challenger' else ''} "
              f"(sha256 {entry['sha256']}, change request {entry['change_request']})")
    else:
        print(f"{job.name} run {result.run_id} FAILED: {failure_reason(result)}", file=sys.stderr)
    return result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiml", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    seed_cmd = commands.add_parser("seed-edp", help="write the synthetic EDP source products into the local catalog")
    run_cmd = commands.add_parser("run-local", help="seed the local EDP, then materialize the whole graph: features, "
                                  "models, local promotion, scores for the day after --end-date, the CDP")
    for cmd in (seed_cmd, run_cmd):
        cmd.add_argument("--customers", type=int, default=10_000)
        cmd.add_argument("--seed", type=int, default=7)
        cmd.add_argument("--end-date", type=date.fromisoformat, default=date(2026, 10, 31))
    commands.add_parser("prepare-instance", help="create the local Dagster home with its dagster.yaml")
    digest_cmd = commands.add_parser("digest", help="the SHA-256 digests of customer ids, for a gdpr_erasure run's "
                                     "config (which Dagster keeps: never put the ids themselves in it)")
    digest_cmd.add_argument("customer_ids", nargs="+")
    promote_cmd = commands.add_parser("promote", help="promote a gated model version to uat, or from uat to prod, "
                                      "under a change request (writes the release manifest, audited)")
    promote_cmd.add_argument("--product", required=True)
    promote_cmd.add_argument("--version", type=int, required=True)
    promote_cmd.add_argument("--change-request", default="", help="ServiceNow change, e.g. CHG0123456 (required; "
                             "a promotion without one is refused and audited)")
    promote_cmd.add_argument("--target", choices=("uat", "prod"), required=True)
    promote_cmd.add_argument("--role", choices=("champion", "challenger"), default="champion",
                             help="prod only: challenger makes the version prod's canary model; the champion stays")
    promote_cmd.add_argument("--resources-dir", type=Path, default=None,
                             help="where the env files whose release manifests are rewritten live (default: the "
                             "repository's resources/ from lab; a copy under the AIML home locally)")
    args = parser.parse_args(argv)

    if args.command == "digest":
        from aiml_assets.governance.erased import digest

        print("\n".join(sorted(digest(customer_id) for customer_id in set(args.customer_ids))))
        return 0
    if args.command == "prepare-instance":
        print(prepare_instance())
        return 0
    if args.command == "promote":
        return 0 if promote(args.product, args.version, args.change_request, args.target, args.resources_dir,
                            args.role) else 1
    print(f"AIML_ENV={current_env()} AIML_HOME={aiml_home()}")
    counts = seed(args.customers, args.seed, args.end_date)
    for name, rows in counts.items():
        print(f"{name}: {rows} rows")
    if args.command == "seed-edp":
        return 0
    succeeded = run_main_job(scoring_day=args.end_date + timedelta(days=1))
    print(f"audit log: {record_local_materializations()} materializations recorded")
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
