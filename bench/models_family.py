"""Benchmark (not a test): the model family trained in one step vs one run per product.

In a fresh temporary AIML_HOME and DAGSTER_HOME (deleted afterwards), with AIML_PRODUCTS=N (the env file's six
products, then generated codes, as `aiml seed-edp --products N` seeds them):
  1. setup       seed the local EDP (N products, C customers, seed 7) and run the `main` job for the three
                 snapshots 2026-08-01..2026-10-01 (as test_models.py does)
  2. family      the `train_models` job once over every product (the single-run backfill: one step)
  3. per-product the `train_models` job once per product (one partition per run, as a backfill run per partition)
Phases 2 and 3 alternate over `--rounds` rounds (family first in odd rounds, per-product first in even ones), each in
a subprocess of its own (one Spark session each) under `/usr/bin/time -v` while /proc is polled for the CPU seconds
and RSS of the whole process tree (Python + Spark JVM + Python workers), with features_scale.py's sampler.

    .venv/bin/python bench/models_family.py --products 49 --customers 10000 --rounds 2

writes bench/results/models_family.md (raw JSON and logs under bench/results/raw/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_scale import GIB, PROJECT_ROOT, RESULTS_DIR, code_fingerprint, run_phase  # noqa: E402

SNAPSHOTS = ("2026-08-01", "2026-10-01")
MODES = ("family", "per-product")


def _range(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def phase_main(phase: str, out: Path, customers: int) -> int:
    """One phase, in this process (the subprocess `run_phase` measures); its summary goes to `out`."""
    from dagster import DagsterInstance, execute_job, reconstructable

    from aiml_assets.cli import prepare_instance
    from aiml_assets.definitions import main_job_for_current_env, models_job_for_current_env
    from aiml_assets.keys import BINARY_KEY
    from aiml_assets.settings import aiml_home, load_settings

    settings = load_settings()
    products = settings.products
    prepare_instance()
    with DagsterInstance.get() as instance:
        if phase == "setup":
            from aiml_assets.edp.seed import seed_edp
            from aiml_assets.resources.catalog import LocalCatalog

            seed_edp(LocalCatalog(home=str(aiml_home())), customers=customers, seed=7, products=products,
                     log=lambda _: None)
            runs = [execute_job(reconstructable(main_job_for_current_env), instance=instance, tags=_range(*SNAPSHOTS))]
        elif phase == "family":
            runs = [execute_job(reconstructable(models_job_for_current_env), instance=instance,
                                tags=_range(products[0], products[-1]))]
        else:
            runs = [execute_job(reconstructable(models_job_for_current_env), instance=instance,
                                tags={"dagster/partition": product}) for product in products]
        binaries = sorted({e.partition for run in runs for e in run.get_asset_materialization_events()
                           if e.asset_key == BINARY_KEY})
        steps = sum(len(run.get_step_success_events()) + len(run.get_step_failure_events()) for run in runs)
        out.write_text(json.dumps({"products": len(products), "runs": len(runs), "steps": steps,
                                   "runs_succeeded": sum(run.success for run in runs),
                                   "published": len(binaries)}))
    return 0 if phase != "setup" or runs[0].success else 1


def measured(phase: str, args, env: dict, run_dir: Path) -> dict:
    summary = run_dir / f"{phase}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--summary", str(summary),
           "--customers", str(args.customers)]
    result = run_phase(phase, cmd, env, run_dir / f"{phase}.log", args.timeout)
    result.pop("cpu_series", None)
    result["summary"] = json.loads(summary.read_text()) if summary.exists() else None
    return result


def report(args, setup: dict, rounds: list[dict[str, dict]]) -> str:
    fingerprint = code_fingerprint()
    lines = ["# The model family in one step vs one run per product", "",
             f"{args.products} products, {args.customers} customers (seed 7), snapshots {SNAPSHOTS[0]}..{SNAPSHOTS[1]} "
             f"(2 train, 1 validates), local Spark, {os.cpu_count()} cores; measured "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at commit {fingerprint['git_head']} plus the working "
             f"tree (sources {fingerprint['sources_sha256']}). Setup (seed + main job): {setup['wall_s']:.0f} s wall.", "",
             "| round | mode | runs | steps | published | wall s | CPU s (tree) | peak RSS tree GiB | other CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, by_mode in enumerate(rounds, 1):
        for mode in MODES:
            r, s = by_mode[mode], by_mode[mode]["summary"] or {}
            other = r["machine_cpu_s"] - r["cpu_tree_s"]
            lines.append(f"| {i} | {mode} | {s.get('runs', '?')} | {s.get('steps', '?')} | "
                         f"{s.get('published', '?')}/{s.get('products', '?')} | {r['wall_s']:.0f} | "
                         f"{r['cpu_tree_s']:.0f} | {r['peak_tree_rss'] / GIB:.2f} | {other:.0f} |")
    for mode in MODES:
        walls = [by_mode[mode]["wall_s"] for by_mode in rounds]
        cpus = [by_mode[mode]["cpu_tree_s"] for by_mode in rounds]
        lines.append(f"\n{mode}: median wall {sorted(walls)[len(walls) // 2]:.0f} s, "
                     f"median CPU {sorted(cpus)[len(cpus) // 2]:.0f} s")
    lines.append("\n'other CPU s': busy CPU of processes outside the measured tree during the phase (other work "
                 "on the machine; wall times are comparable only when it is small).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=49)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--phase", choices=("setup", *MODES), help=argparse.SUPPRESS)
    parser.add_argument("--summary", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return phase_main(args.phase, args.summary, args.customers)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS_DIR / "raw" / f"models_family_{stamp}"
    run_dir.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="aiml_models_bench_"))
    env = {**os.environ, "AIML_ENV": "local", "AIML_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "dagster"),
           "AIML_PRODUCTS": str(args.products), "PYTHONPATH": str(PROJECT_ROOT)}
    env.setdefault("AIML_AUDIT_KEY", "bench-audit-key")
    try:
        setup = measured("setup", args, env, run_dir)
        if setup["rc"] != 0:
            print("\n".join(setup.get("log_tail", [])))
            return 1
        rounds = []
        for i in range(args.rounds):
            order = MODES if i % 2 == 0 else MODES[::-1]
            rounds.append({mode: measured(mode, args, env, run_dir) for mode in order})
            time.sleep(1)
        (run_dir / "results.json").write_text(json.dumps({"setup": setup, "rounds": rounds}, indent=2))
        text = report(args, setup, rounds)
        (RESULTS_DIR / "models_family.md").write_text(text)
        print(text)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
