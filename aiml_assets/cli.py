"""`aiml`: the local platform's commands (seed the local EDP, run the main job, promote a model version, prepare
the Dagster instance)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aiml_assets.settings import (
    DEPLOYMENTS_DIR, PRODUCTS_ENV_VAR, PROJECT_ROOT, aiml_home, current_env, load_settings,
)


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
    print(f"products: {len(settings.products)} ({PRODUCTS_ENV_VAR}={os.environ.get(PRODUCTS_ENV_VAR) or 'unset'})")
    return seed_edp(catalog, customers=customers, seed=seed_value, end_date=end_date, products=settings.products)


def use_product_count(count: int) -> None:
    """Seed and run `count` products in this process: the settings take them from PRODUCTS_ENV_VAR, so that the
    seeded data and every setting built from it (partitions, schemas) agree. The env file is not touched."""
    already = os.environ.get(PRODUCTS_ENV_VAR, "").strip()
    if already and already != str(count):
        raise SystemExit(f"--products {count} disagrees with {PRODUCTS_ENV_VAR}={already}: the settings would not "
                         "know the seeded products")
    os.environ[PRODUCTS_ENV_VAR] = str(count)
    load_settings.cache_clear()


# The change request id of local promotions: local versions only ever reach the manifests' copies under the AIML
# home, and no real ServiceNow change has this number.
LOCAL_CHANGE_REQUEST = "CHG0000000"


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


def promote_reason(product: str, version: int, change_request: str, target: str, resources_dir: Path | None,
                   role: str = "champion") -> str | None:
    """Run the promote_model job on the local Dagster instance and print its outcome: None on success, else why
    it failed."""
    from dagster import DagsterInstance

    from aiml_assets.resources.audit import actor_of
    from aiml_assets.models.promotion import failure_reason, promotion_job, promotion_resources, promotion_run_config

    settings = load_settings()
    job = promotion_job(settings, promotion_resources(settings, resources_dir))
    tags = {"aiml/requested_by": actor_of({}), **({"aiml/change_request": change_request} if change_request else {})}
    prepare_instance()
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(run_config=promotion_run_config(product, version, change_request, target, role),
                                        instance=instance, tags=tags, raise_on_error=False)
    if not result.success:
        reason = failure_reason(result)
        print(f"{job.name} run {result.run_id} FAILED: {reason}", file=sys.stderr)
        return reason
    entry = result.output_for_node("promote")
    print(f"{job.name} run {result.run_id}: {entry['name']} version {entry['version']} promoted to {target}"
          f"{' as challenger (canary)' if target == 'prod' and role == 'challenger' else ''} "
          f"(sha256 {entry['sha256']}, change request {entry['change_request']})")
    return None


def promote(product: str, version: int, change_request: str, target: str, resources_dir: Path | None,
            role: str = "champion") -> bool:
    return promote_reason(product, version, change_request, target, resources_dir, role) is None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiml", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    seed_cmd = commands.add_parser("seed-edp", help="write the synthetic EDP source products into the local catalog")
    run_cmd = commands.add_parser("run-local", help="seed the local EDP, then materialize the whole graph: features, "
                                  "models, local promotion of the gated ones, scores for the day after the data "
                                  "ends, the CDP")
    for cmd in (seed_cmd, run_cmd):
        cmd.add_argument("--customers", type=int, default=10_000)
        cmd.add_argument("--seed", type=int, default=7)
        cmd.add_argument("--end-date", type=date.fromisoformat, default=date(2026, 10, 31),
                         help="the last day of the seeded EDP data (what run-local picks follows it)")
        cmd.add_argument("--products", type=int, default=None,
                         help=f"how many products (default: {PRODUCTS_ENV_VAR}, else the env file's 6 named ones): "
                         "the named ones, then product_07, product_08, ...; later commands and the Dagster UI "
                         f"need {PRODUCTS_ENV_VAR} set to the same number")
    run_cmd.add_argument("--today", type=date.fromisoformat, default=None,
                         help="run as if today were this date (default: today, UK time): it only bounds the "
                         "partitions that exist; the snapshots and scoring day follow the data")
    commands.add_parser("prepare-instance", help="create the local Dagster home with its dagster.yaml")
    digest_cmd = commands.add_parser("digest", help="the keyed digests (HMAC-SHA256 under AIML_ENV's erasure key) of "
                                     "customer ids, for a gdpr_erasure run's config (which Dagster keeps: never put "
                                     "the ids themselves in it)")
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
    gate_cmd = commands.add_parser("check-change-request", help="CI: refuse unless the change system has the change "
                                   "request approved, in Implement, planned around now and listing the release")
    launch_cmd = commands.add_parser("launch", help="CI: launch a job in a locked environment (uat, prod) under an "
                                     "approved change request, signed with the environment's launch key")
    for cmd in (gate_cmd, launch_cmd):
        cmd.add_argument("--change-request", required=True)
        cmd.add_argument("--release", required=True, help="the release shipped or running (RELEASE.json's version)")
    launch_cmd.add_argument("--job", required=True)
    launch_cmd.add_argument("--partition", default="")
    launch_cmd.add_argument("--config-json", type=json.loads, default={}, help="op config only (ops: ...)")
    args = parser.parse_args(argv)

    if args.command == "digest":
        from aiml_assets.sources.erased import ErasureKeyMissing, digest, erasure_key

        try:
            key = erasure_key(load_settings())
        except ErasureKeyMissing as exc:
            print(f"REFUSED: {exc}", file=sys.stderr)
            return 1
        print("\n".join(sorted(digest(customer_id, key) for customer_id in set(args.customer_ids))))
        return 0
    if args.command == "prepare-instance":
        print(prepare_instance())
        return 0
    if args.command == "check-change-request":
        from aiml_assets.governance.change_management import ChangeRequestRefused, from_environment

        try:
            from_environment(os.environ).approved(args.change_request, args.release)
        except ChangeRequestRefused as exc:
            print(f"REFUSED: {exc}", file=sys.stderr)
            return 1
        print(f"{args.change_request}: approved, in its implementation window, lists {args.release}")
        return 0
    if args.command == "launch":
        from aiml_assets.governance.ci_launch import launch

        return launch(load_settings(), os.environ, job=args.job, partition=args.partition, run_config=args.config_json,
                      change_request=args.change_request, release=args.release)
    if args.command == "promote":
        return 0 if promote(args.product, args.version, args.change_request, args.target, args.resources_dir,
                            args.role) else 1
    if args.products is not None:
        use_product_count(args.products)
    print(f"AIML_ENV={current_env()} AIML_HOME={aiml_home()}")
    counts = seed(args.customers, args.seed, args.end_date)
    for name, rows in counts.items():
        print(f"{name}: {rows} rows")
    if args.command == "seed-edp":
        return 0
    from aiml_assets.local_run import run_local

    not_published = run_local(args.today or datetime.now(ZoneInfo("Europe/London")).date())
    print(f"audit log: {record_local_materializations()} materializations recorded")
    if not_published:
        print(f"run-local: {not_published}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
