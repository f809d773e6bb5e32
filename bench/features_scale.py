"""Benchmark (not a test): does the lab features path scale with the size of the local EDP?

For each customer count, in a fresh temporary AIML_HOME and DAGSTER_HOME (deleted afterwards):
  1. seed   `aiml seed-edp --customers N --seed 7`                        (subprocess)
  2. job    the `main` job for ONE monthly snapshot: EDP observation, the four blocking source checks,
            lab/customer_features + check, lab/training_set + check        (subprocess, `execute_job`)
Each phase runs under `/usr/bin/time -v` while this process polls /proc for the RSS of the whole process tree
(Python + the Spark JVM). The job subprocess reads the Dagster event log (per-step durations, row counts, check
results) and Spark's status store (jobs, bytes read, spill, GC, attributed to steps by time) into a JSON file.

    .venv/bin/python bench/features_scale.py --customers 10000 200000 1000000

writes bench/results/features_scale.md (and raw JSON + logs under bench/results/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
TIME_BIN = "/usr/bin/time"
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1024 ** 3

# --------------------------------------------------------------------------------------------------------------
# Process-tree memory: poll /proc (psutil is not a project dependency)
# --------------------------------------------------------------------------------------------------------------


TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, int, float]]:
    """pid -> (ppid, comm, rss bytes, cpu seconds) for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        table[int(entry)] = (ppid, comm, rss_pages * PAGE, cpu)
    return table


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, and the peak per kind (java / python)."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = root_pid, interval
        self.peak_total = 0
        self.peak_by_kind: dict[str, int] = {}
        self.samples = 0
        self.cpu_by_pid: dict[int, float] = {}  # last seen CPU seconds of every process of the tree
        self.series: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds of the tree so far)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            table = _proc_table()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            tree, todo = [], [self.root]
            while todo:
                pid = todo.pop()
                if pid in table:
                    tree.append(pid)
                todo.extend(children.get(pid, []))
            total, kinds = 0, {}
            for pid in tree:
                _, comm, rss, cpu = table[pid]
                self.cpu_by_pid[pid] = cpu
                total += rss
                kind = "java" if comm.startswith("java") else "python" if comm.startswith("python") else "other"
                kinds[kind] = kinds.get(kind, 0) + rss
            self.series.append((time.time(), sum(self.cpu_by_pid.values())))
            self.peak_total = max(self.peak_total, total)
            for kind, rss in kinds.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _machine_cpu_s() -> float:
    """CPU seconds all processes of the machine have used so far (busy time from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def _parse_time_v(path: Path) -> dict:
    out = {}
    if not path.exists():
        return out
    text = path.read_text()
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        out["maxrss_largest_process"] = int(m.group(1)) * 1024
    if m := re.search(r"Elapsed \(wall clock\) time.*: (.+)", text):
        out["time_wall"] = m.group(1).strip()
    for key, label in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)")):
        if m := re.search(re.escape(label) + r": ([\d.]+)", text):
            out[key] = float(m.group(1))
    if m := re.search(r"Exit status: (\d+)", text):
        out["exit_status"] = int(m.group(1))
    if m := re.search(r"Command terminated by signal (\d+)", text):
        out["signal"] = int(m.group(1))
    return out


def run_phase(name: str, cmd: list[str], env: dict, log: Path, timeout: float | None) -> dict:
    """Run `cmd` under /usr/bin/time -v, sampling the process tree's memory; output goes to `log`."""
    time_file = log.with_suffix(".time")
    full = [TIME_BIN, "-v", "-o", str(time_file), *cmd]
    print(f"  [{name}] {' '.join(cmd)}  (log: {log})", flush=True)
    started, machine_cpu, load = time.perf_counter(), _machine_cpu_s(), os.getloadavg()[0]
    with open(log, "w") as out:
        proc = subprocess.Popen(full, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 15)  # our own session: the phase's process tree only
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc = proc.wait()
        finally:
            sampler.stop()
    wall = time.perf_counter() - started
    machine_cpu = _machine_cpu_s() - machine_cpu
    result = {"machine_cpu_s": machine_cpu, "load_before": load, "load_after": os.getloadavg()[0], "phase": name, "rc": rc, "wall_s": wall, "timed_out": timed_out,
              "peak_tree_rss": sampler.peak_total, "peak_rss_by_kind": sampler.peak_by_kind,
              "rss_samples": sampler.samples, "cpu_tree_s": sum(sampler.cpu_by_pid.values()),
              "cpu_series": [(round(t, 2), round(c, 2)) for t, c in sampler.series],
              **_parse_time_v(time_file)}
    if rc != 0:
        result["log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
    print(f"  [{name}] rc={rc} wall={wall:.1f}s cpu={result['cpu_tree_s']:.0f}s "
          f"peak tree RSS={sampler.peak_total / GIB:.2f} GiB", flush=True)
    return result


# --------------------------------------------------------------------------------------------------------------
# The job subprocess: run the main job for one snapshot, then dump the event log and Spark's status store
# --------------------------------------------------------------------------------------------------------------


def _spark_jobs() -> dict:
    """Every Spark job of this process (Spark's status store works with the UI disabled)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()
    jobs_seq = store.jobsList(None)
    jobs = []
    for i in range(jobs_seq.size()):
        j = jobs_seq.apply(i)
        stage_ids = [j.stageIds().apply(k) for k in range(j.stageIds().size())]
        stages = {"input_bytes": 0, "input_records": 0, "cpu_ms": 0, "shuffle_write_bytes": 0, "spill_memory_bytes": 0,
                  "spill_disk_bytes": 0, "gc_ms": 0, "run_ms": 0, "tasks": 0, "skipped_stages": 0}
        for sid in stage_ids:
            try:
                s = store.lastStageAttempt(sid)
            except Exception:  # noqa: BLE001 - a stage evicted from the store
                continue
            if s.status().toString() == "SKIPPED":
                stages["skipped_stages"] += 1
                continue
            stages["input_bytes"] += s.inputBytes()
            stages["input_records"] += s.inputRecords()
            stages["shuffle_write_bytes"] += s.shuffleWriteBytes()
            stages["spill_memory_bytes"] += s.memoryBytesSpilled()
            stages["spill_disk_bytes"] += s.diskBytesSpilled()
            stages["gc_ms"] += s.jvmGcTime()
            stages["run_ms"] += s.executorRunTime()
            stages["cpu_ms"] += s.executorCpuTime() / 1e6
            stages["tasks"] += s.numTasks()
        submitted = j.submissionTime().get().getTime() / 1000 if j.submissionTime().isDefined() else None
        completed = j.completionTime().get().getTime() / 1000 if j.completionTime().isDefined() else None
        jobs.append({"id": j.jobId(), "name": j.name(), "status": j.status().toString(), "submitted": submitted,
                     "completed": completed, **stages})
    runtime = sc._jvm.java.lang.Runtime.getRuntime()
    conf = sc.getConf()
    return {"jobs": sorted(jobs, key=lambda j: j["id"]),
            "driver_memory_conf": conf.get("spark.driver.memory", None),
            "jvm_max_heap": runtime.maxMemory(),
            "master": sc.master, "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions")}


def _meta_value(value):
    for attr in ("value", "text", "data"):
        if hasattr(value, attr):
            return getattr(value, attr)
    return str(value)


def _classify(asset: str, check: str | None) -> str:
    if check is not None:
        return "features_check" if asset == "lab/customer_features" else \
            "training_check" if asset == "lab/training_set" else f"source_check:{asset}"
    return {"lab/customer_features": "features", "lab/training_set": "training"}.get(asset, "source_observation")


def code_fingerprint() -> dict:
    """Which code ran: git HEAD and a hash of the package's sources (others may be editing them meanwhile)."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted((PROJECT_ROOT / "aiml_assets").rglob("*.py")) + sorted((PROJECT_ROOT / "resources").glob("*.yaml"))
    for f in files:
        digest.update(str(f.relative_to(PROJECT_ROOT)).encode() + b"\0" + f.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return {"sources_sha256": digest.hexdigest()[:12], "git_head": head.stdout.strip() or None,
            "newest_source": max(datetime.fromtimestamp(f.stat().st_mtime, timezone.utc) for f in files)
            .strftime("%H:%M:%S UTC")}


def job_main(args: argparse.Namespace) -> int:
    """In the job subprocess: AIML_HOME and DAGSTER_HOME are the benchmark's temp dirs."""
    fingerprint = code_fingerprint()  # before the imports: the code this process runs
    from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

    from aiml_assets.cli import prepare_instance
    from aiml_assets.definitions import main_job_for_current_env
    from aiml_assets.local_run import local_horizon
    from aiml_assets.resources.per_environment import build_resources
    from aiml_assets.settings import load_settings
    from aiml_assets.sources.horizon import labelled_snapshots

    prepare_instance()
    partitions = main_job_for_current_env().partitions_def
    keys = partitions.get_partition_keys()
    if args.snapshot == "latest":  # the latest the data can label, as `aiml run-local` picks it
        settings = load_settings()
        snapshot = labelled_snapshots(partitions, local_horizon(build_resources(settings)), count=1,
                                      window_days=settings.features.label_window_days, today=date.today())[-1]
    else:
        snapshot = args.snapshot
    if snapshot not in keys:
        raise SystemExit(f"snapshot {snapshot} is not a partition of the main job (last: {keys[-1]})")
    if args.partition_mode == "partition":
        tags = {"dagster/partition": snapshot}
    else:  # what `aiml run-local` does, for a one-snapshot range
        tags = {"dagster/asset_partition_range_start": snapshot, "dagster/asset_partition_range_end": snapshot}
    out: dict = {"snapshot": snapshot, "tags": tags, "pid": os.getpid(), "code": fingerprint}
    started = time.perf_counter()
    try:
        with DagsterInstance.get() as instance:
            result = execute_job(reconstructable(main_job_for_current_env), instance=instance, tags=tags,
                                 raise_on_error=False)
            out.update(run_id=result.run_id, success=result.success,
                       execute_job_s=time.perf_counter() - started)
            steps: dict[str, dict] = {}
            for entry in instance.all_logs(result.run_id):
                event = entry.dagster_event
                if event is None or event.step_key is None:
                    continue
                step = steps.setdefault(event.step_key, {"step": event.step_key, "assets": [], "checks": []})
                kind = event.event_type
                if kind == DagsterEventType.STEP_START:
                    step["start"] = entry.timestamp
                elif kind == DagsterEventType.STEP_SUCCESS:
                    step["end"], step["duration_ms"], step["status"] = (
                        entry.timestamp, event.event_specific_data.duration_ms, "success")
                elif kind == DagsterEventType.STEP_FAILURE:
                    step["end"], step["status"] = entry.timestamp, "failure"
                    step["error"] = str(event.event_specific_data.error.message)[:2000]
                elif kind == DagsterEventType.STEP_SKIPPED:
                    step["status"] = "skipped"
                elif kind == DagsterEventType.ASSET_MATERIALIZATION:
                    m = event.step_materialization_data.materialization
                    step["assets"].append({"asset": m.asset_key.to_user_string(), "partition": m.partition,
                                           "metadata": {k: _meta_value(v) for k, v in m.metadata.items()
                                                        if k in ("dagster/row_count", "table_version",
                                                                 "rows_per_product")}})
                elif kind == DagsterEventType.ASSET_OBSERVATION:
                    o = event.asset_observation_data.asset_observation
                    step["assets"].append({"asset": o.asset_key.to_user_string(), "observation": True,
                                           "metadata": {k: _meta_value(v) for k, v in o.metadata.items()}})
                elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
                    c = event.event_specific_data
                    step["checks"].append({"asset": c.asset_key.to_user_string(), "check": c.check_name,
                                           "passed": c.passed, "partition": getattr(c, "partition", None),
                                           "metadata": {k: _meta_value(v) for k, v in c.metadata.items()}})
            for step in steps.values():
                made = [a for a in step["assets"] if not a.get("observation")]  # an asset step may audit in-step
                target = (made or step["checks"] or step["assets"] or [{"asset": step["step"]}])[0]
                step["kind"] = _classify(target["asset"], target.get("check"))
            out["steps"] = sorted(steps.values(), key=lambda s: s.get("start") or 0)
    except BaseException as exc:  # noqa: BLE001 - record what happened, then fail
        out.update(success=False, error=f"{type(exc).__name__}: {exc}"[:4000],
                   execute_job_s=time.perf_counter() - started)
    try:
        out["spark"] = _spark_jobs()
        for step in out.get("steps", []):  # attribute Spark jobs to steps by time (steps run one at a time)
            lo, hi = step.get("start"), step.get("end")
            mine = [j for j in out["spark"]["jobs"] if lo and hi and j["submitted"] and lo <= j["submitted"] <= hi]
            step["spark_jobs"] = len(mine)
            for key in ("input_bytes", "input_records", "shuffle_write_bytes", "spill_memory_bytes",
                        "spill_disk_bytes", "gc_ms", "run_ms", "cpu_ms"):
                step[key] = sum(j[key] for j in mine)
            step["spark_job_names"] = [j["name"] for j in mine]
    except Exception as exc:  # noqa: BLE001 - e.g. the JVM died
        out["spark_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"main job for snapshot {snapshot}: {'succeeded' if out.get('success') else 'FAILED'}")
    return 0 if out.get("success") else 1


# --------------------------------------------------------------------------------------------------------------
# One size, all sizes, the report
# --------------------------------------------------------------------------------------------------------------


def _cpu_at(series: list, t: float) -> float:
    """The tree's CPU seconds at time t, interpolated between samples."""
    before = [(a, c) for a, c in series if a <= t] or [series[0]]
    after = [(a, c) for a, c in series if a >= t] or [series[-1]]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 10.0) -> float:
    """Wait (up to max_wait s) until the machine's busy CPU over `window` s is below `threshold` cores."""
    started = time.perf_counter()
    while True:
        before = _machine_cpu_s()
        time.sleep(window)
        busy = (_machine_cpu_s() - before) / window
        waited = time.perf_counter() - started
        if busy < threshold or waited >= max_wait:
            if waited > window + 1:
                print(f"  waited {waited:.0f}s for a quiet machine (now {busy:.2f} cores busy)", flush=True)
            return waited


def bench_size(customers: int, args: argparse.Namespace, run_dir: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"aiml-bench-{customers}-", dir=args.tmp_root))
    env = {**os.environ, "AIML_ENV": "local", "AIML_HOME": str(tmp / "aiml"), "DAGSTER_HOME": str(tmp / "dagster"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    if args.spark_submit_args:
        env["PYSPARK_SUBMIT_ARGS"] = args.spark_submit_args
    result: dict = {"customers": customers, "tmp": str(tmp), "spark_submit_args": args.spark_submit_args,
                    "command": " ".join(["bench/features_scale.py", *sys.argv[1:]]),
                    "finished": None}
    print(f"== {customers} customers (AIML_HOME={env['AIML_HOME']})", flush=True)
    try:
        aiml = str(Path(sys.executable).parent / "aiml")
        if args.wait_quiet:
            result["seed_waited_s"] = wait_quiet(args.wait_quiet)
        result["seed"] = run_phase("seed", [aiml, "seed-edp", "--customers", str(customers), "--seed", str(args.seed)],
                                   env, run_dir / f"{customers}-seed.log", args.phase_timeout)
        result["data_bytes"] = sum(f.stat().st_size for f in (tmp / "aiml").rglob("*") if f.is_file())
        if result["seed"]["rc"] != 0:
            return result
        job_json = run_dir / f"{customers}-job.json"
        if args.wait_quiet:
            result["job_waited_s"] = wait_quiet(args.wait_quiet)
        result["job"] = run_phase(
            "job", [sys.executable, str(Path(__file__).resolve()), "_job", "--out", str(job_json),
                    "--snapshot", args.snapshot, "--partition-mode", args.partition_mode],
            env, run_dir / f"{customers}-job.log", args.phase_timeout)
        if job_json.exists():
            result["job_detail"] = json.loads(job_json.read_text())
            series = result["job"].pop("cpu_series", [])
            for step in result["job_detail"].get("steps", []):
                if step.get("start") and step.get("end") and series:
                    step["tree_cpu_s"] = _cpu_at(series, step["end"]) - _cpu_at(series, step["start"])
        result.get("seed", {}).pop("cpu_series", None)
    finally:
        result["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _gib(n) -> str:
    return "-" if not n else f"{n / GIB:.2f}"


def _mib(n) -> str:
    return "-" if not n else f"{n / 1024 ** 2:,.0f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _num(x) -> str:
    return "-" if x is None else f"{int(x):,}"


def _foreign(phase: dict | None) -> str:
    """CPU used by processes outside the phase's tree while it ran: other work competing for the cores."""
    if not phase or "machine_cpu_s" not in phase:
        return "-"
    other = max(0.0, phase["machine_cpu_s"] - phase["cpu_tree_s"])
    return f"{other:,.0f} ({other / phase['wall_s']:.2f} cores)"


def _cpu(phase: dict | None) -> str:
    if not phase or not phase.get("wall_s") or "cpu_tree_s" not in phase:
        return "-"
    return f"{phase['cpu_tree_s']:,.0f} / {phase['cpu_tree_s'] / phase['wall_s']:.2f}"


def _steps(r: dict) -> dict[str, dict]:
    """kind -> merged step (source checks summed)."""
    merged: dict[str, dict] = {}
    for step in r.get("job_detail", {}).get("steps", []):
        kind = step["kind"]
        keys = [kind] + (["source_checks"] if kind.startswith("source_check:") else [])
        for key in keys:
            m = merged.setdefault(key, {"duration_ms": 0, "spark_jobs": 0, "input_records": 0, "spill_disk_bytes": 0,
                                        "shuffle_write_bytes": 0, "gc_ms": 0, "cpu_ms": 0, "tree_cpu_s": 0.0,
                                        "status": "success", "n": 0})
            m["n"] += 1
            m["has_cpu"] = m.get("has_cpu", False) or "tree_cpu_s" in step
            m["duration_ms"] += step.get("duration_ms") or 0
            for k in ("spark_jobs", "input_records", "spill_disk_bytes", "shuffle_write_bytes", "gc_ms", "cpu_ms",
                      "tree_cpu_s"):
                m[k] += step.get(k) or 0
            if step.get("status") != "success":
                m["status"] = step.get("status", "not run")
    return merged


def _rows(r: dict) -> dict[str, int | None]:
    rows: dict[str, int | None] = {}
    for step in r.get("job_detail", {}).get("steps", []):
        for a in step["assets"]:
            if "dagster/row_count" in a["metadata"]:
                rows[a["asset"]] = a["metadata"]["dagster/row_count"]
        for c in step["checks"]:
            rows[f"check {c['asset']}"] = c["metadata"].get("rows")
            rows[f"passed {c['asset']}"] = c["passed"]
    return rows


STEP_ORDER = [
    ("source_observation", "EDP observation (4 tables)"),
    ("source_check:edp/fdp/customers", "check edp/fdp/customers"),
    ("source_check:edp/fdp/transactions", "check edp/fdp/transactions"),
    ("source_check:edp/cdp/product_holdings", "check edp/cdp/product_holdings"),
    ("source_check:edp/bdp/campaign_responses", "check edp/bdp/campaign_responses"),
    ("source_checks", "**all 4 source checks**"),
    ("features", "**lab/customer_features**"),
    ("features_check", "check lab/customer_features"),
    ("training", "**lab/training_set**"),
    ("training_check", "check lab/training_set"),
]
TXN = "edp/fdp/transactions"


def _call_sites(r: dict, top: int = 12) -> list[str]:
    """Where the Spark time of the largest run went, by the Python call site that started each Spark job."""
    detail = r.get("job_detail", {})
    jobs, steps = detail.get("spark", {}).get("jobs", []), detail.get("steps", [])
    if not jobs:
        return []
    groups: dict[tuple[str, str], dict] = {}
    for j in jobs:
        step = next((s["step"] for s in steps if s.get("start") and s.get("end") and j["submitted"]
                     and s["start"] <= j["submitted"] <= s["end"]), "(outside steps)")
        name = j["name"]
        if "CompletableFuture" in name:  # submitted from a JVM thread (AQE query stages): no Python call site
            name = "(AQE query stage, async)"
        name = name.replace(str(PROJECT_ROOT) + "/", "")
        g = groups.setdefault((step, name), {"n": 0, "s": 0.0, "read": 0, "shuffle": 0, "spill": 0, "gc": 0})
        g["n"] += 1
        g["s"] += (j["completed"] or j["submitted"]) - j["submitted"] if j["submitted"] else 0
        g["read"] += j["input_records"]
        g["shuffle"] += j["shuffle_write_bytes"]
        g["spill"] += j["spill_disk_bytes"]
        g["gc"] += j["gc_ms"]
    ranked = sorted(groups.items(), key=lambda kv: -kv[1]["s"])[:top]
    lines = ["", f"## Spark jobs of the {r['customers']:,}-customer run by call site (top {top} by job time)", "",
             "| step | call site | jobs | job time (s) | rows read (M) | shuffle write MiB | disk spill MiB | GC s |",
             "|---|---|---|---|---|---|---|---|"]
    for (step, name), g in ranked:
        lines.append(f"| {step} | `{name}` | {g['n']} | {g['s']:,.1f} | {g['read'] / 1e6:,.1f} | {_mib(g['shuffle'])} | "
                     f"{_mib(g['spill'])} | "
                     f"{g['gc'] / 1000:,.1f} |")
    return lines


def report(results: list[dict], args: argparse.Namespace) -> str:
    sizes = [r["customers"] for r in results]
    head = "| | " + " | ".join(f"{n:,} customers" for n in sizes) + " |"
    rule = "|---" * (len(sizes) + 1) + "|"

    def row(label, values):
        return f"| {label} | " + " | ".join(values) + " |"

    def get(r, *path):
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None
        return r

    steps = [_steps(r) for r in results]
    rows = [_rows(r) for r in results]
    txns = [rw.get(TXN) for rw in rows]
    first = results[0].get("job_detail", {})
    lines = [
        "# Lab features path: scaling benchmark",
        "",
        f"`{results[0].get('command', 'bench/features_scale.py')}`, finished {results[-1].get('finished')}; "
        f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * PAGE / GIB:.0f} GiB RAM; one snapshot "
        f"({first.get('snapshot', '?')}, tags {first.get('tags', {})}); Spark {get(first, 'spark', 'master')}, "
        f"spark.driver.memory={get(first, 'spark', 'driver_memory_conf')} (JVM max heap "
        f"{_gib(get(first, 'spark', 'jvm_max_heap'))} GiB), shuffle partitions "
        f"{get(first, 'spark', 'shuffle_partitions')}"
        + (f", PYSPARK_SUBMIT_ARGS=`{results[0]['spark_submit_args']}`" if results[0].get("spark_submit_args")
           else "") + ".",
        "Peak RSS \"tree\" is the summed RSS of the phase's whole process tree (Python + Spark JVM), polled every "
        "0.5 s from /proc; \"largest\" is `/usr/bin/time -v`'s maximum RSS (the largest single process).",
        "",
        "## Phases",
        "", head, rule,
        row("EDP transactions", [_num(t) for t in txns]),
        row("local EDP on disk (GiB)", [_gib(r.get("data_bytes")) for r in results]),
        row("seed: wall (s)", [_s(get(r, "seed", "wall_s")) for r in results]),
        row("seed: peak RSS tree / largest (GiB)",
            [f"{_gib(get(r, 'seed', 'peak_tree_rss'))} / {_gib(get(r, 'seed', 'maxrss_largest_process'))}"
             for r in results]),
        row("seed: CPU s (tree) / cores busy", [_cpu(r.get("seed")) for r in results]),
        row("job: wall incl. JVM start (s)", [_s(get(r, "job", "wall_s")) for r in results]),
        row("job: CPU s (tree) / cores busy", [_cpu(r.get("job")) for r in results]),
        row("seed / job: other processes' CPU s meanwhile (contention)", [f"{_foreign(r.get('seed'))} / {_foreign(r.get('job'))}"
                                                             for r in results]),
        row("job: `execute_job` (s)", [_s(get(r, "job_detail", "execute_job_s")) for r in results]),
        row("job: peak RSS tree / largest (GiB)",
            [f"{_gib(get(r, 'job', 'peak_tree_rss'))} / {_gib(get(r, 'job', 'maxrss_largest_process'))}"
             for r in results]),
        row("job: peak RSS JVM / Python (GiB)",
            [f"{_gib(get(r, 'job', 'peak_rss_by_kind', 'java'))} / {_gib(get(r, 'job', 'peak_rss_by_kind', 'python'))}"
             for r in results]),
        row("job: succeeded", [str(get(r, "job_detail", "success")) for r in results]),
        row("code measured (sources sha256, git HEAD, newest source file)",
            [f"`{get(r, 'job_detail', 'code', 'sources_sha256')}` {get(r, 'job_detail', 'code', 'git_head')} "
             f"{get(r, 'job_detail', 'code', 'newest_source')}" for r in results]),
        row("Spark jobs in the run", [_num(len(get(r, "job_detail", "spark", "jobs") or [])) for r in results]),
        row("**total wall (s)**", [_s((get(r, "seed", "wall_s") or 0) + (get(r, "job", "wall_s") or 0))
                                   for r in results]),
        "",
        "## Dagster steps", "", "Wall seconds per step (STEP_SUCCESS duration from the event log)",
        "", head, rule,
    ]
    for kind, label in STEP_ORDER:
        lines.append(row(label, [
            (f"{st[kind]['duration_ms'] / 1000:,.1f}" + ("" if st[kind]["status"] == "success" else f" ({st[kind]['status']})"))
            if kind in st else "-" for st in steps]))
    lines += ["", "CPU seconds per step: the whole process tree (Python + JVM, from the /proc samples) / Spark tasks "
              "only (executorCpuTime). Unlike wall time, these barely change when other processes compete for the "
              "cores.", "", head, rule]
    for kind, label in STEP_ORDER:
        lines.append(row(label, [f"{st[kind]['tree_cpu_s']:,.1f} / {st[kind]['cpu_ms'] / 1000:,.1f}"
                                 if kind in st and st[kind]["has_cpu"] else "-" for st in steps]))
    lines += ["", "Spark jobs started during each step: jobs / rows read (M) / shuffle write MiB / disk spill MiB / "
              "JVM GC s", "", head, rule]
    for kind, label in STEP_ORDER:
        if kind.startswith("source_check:"):
            continue
        lines.append(row(label, [
            f"{st[kind]['spark_jobs']} / {st[kind]['input_records'] / 1e6:,.1f} / {_mib(st[kind]['shuffle_write_bytes'])}"
            f" / {_mib(st[kind]['spill_disk_bytes'])} / {st[kind]['gc_ms'] / 1000:,.1f}" if kind in st else "-"
            for st in steps]))
    lines += ["", "## Row counts", "", head, rule]
    for asset in ("edp/fdp/customers", TXN, "edp/cdp/product_holdings", "edp/bdp/campaign_responses",
                  "lab/customer_features", "lab/training_set"):
        lines.append(row(asset, [_num(rw.get(asset)) for rw in rows]))
    for asset in ("lab/customer_features", "lab/training_set"):
        lines.append(row(f"check {asset}: rows checked / passed",
                         [f"{_num(rw.get(f'check {asset}'))} / {rw.get(f'passed {asset}', '-')}" for rw in rows]))
    # ratios
    def per_m(value_s, t):
        return None if value_s is None or not t else value_s / (t / 1e6)

    def rel(values):
        base = values[0]
        return ["-" if v is None or not base else f"{v / base:.2f}" for v in values]

    seed_pm = [per_m(get(r, "seed", "wall_s"), t) for r, t in zip(results, txns)]
    job_pm = [per_m(get(r, "job", "wall_s"), t) for r, t in zip(results, txns)]
    feat_pm = [per_m(st["features"]["duration_ms"] / 1000 if "features" in st else None, t)
               for st, t in zip(steps, txns)]
    srcchk_pm = [per_m(st["source_checks"]["duration_ms"] / 1000 if "source_checks" in st else None, t)
                 for st, t in zip(steps, txns)]
    rss_pm = [None if not t else (get(r, "job", "peak_tree_rss") or 0) / GIB / (t / 1e6) for r, t in zip(results, txns)]

    def ratio(st, a, b):
        if a not in st or b not in st or not st[b]["duration_ms"]:
            return "-"
        value = st[a]["duration_ms"] / st[b]["duration_ms"]
        text = f"{value:.2f}" + (" ✓" if value < 1 else " ✗")
        if st[b]["tree_cpu_s"]:
            cpu = st[a]["tree_cpu_s"] / st[b]["tree_cpu_s"]
            text += f" / {cpu:.2f}" + (" ✓" if cpu < 1 else " ✗")
        return text

    lines += [
        "", "## Ratios (same run)", "", head, rule,
        row("seed s per M transactions (rel. to first size)",
            [f"{_s(v)} ({x})" for v, x in zip(seed_pm, rel(seed_pm))]),
        row("job wall s per M transactions (rel.)", [f"{_s(v)} ({x})" for v, x in zip(job_pm, rel(job_pm))]),
        row("features step s per M transactions (rel.)", [f"{_s(v)} ({x})" for v, x in zip(feat_pm, rel(feat_pm))]),
        row("source checks s per M transactions (rel.)",
            [f"{_s(v)} ({x})" for v, x in zip(srcchk_pm, rel(srcchk_pm))]),
        row("job peak RSS tree GiB per M transactions", [_s(v) if v is None else f"{v:.2f}" for v in rss_pm]),
        row("features check / features, wall / CPU (< 1 ✓)", [ratio(st, "features_check", "features") for st in steps]),
        row("training check / training, wall / CPU (< 1 ✓)", [ratio(st, "training_check", "training") for st in steps]),
        row("transactions check / features, wall / CPU", [ratio(st, "source_check:edp/fdp/transactions", "features")
                                               for st in steps]),
        row("all source checks / features, wall / CPU", [ratio(st, "source_checks", "features") for st in steps]),
    ]
    lines += _call_sites(results[-1])
    problems = []
    if len({get(r, "job_detail", "code", "sources_sha256") for r in results}) > 1:
        problems.append("- the sources changed between sizes (see \"code measured\"): the sizes ran different code")
    for r in results:
        for phase in ("seed", "job"):
            p = r.get(phase)
            if p and (p["rc"] != 0 or p.get("timed_out")):
                problems.append(f"- {r['customers']:,} customers, {phase}: rc={p['rc']}"
                                f"{' (timed out)' if p.get('timed_out') else ''}"
                                f"{', signal ' + str(p['signal']) if p.get('signal') else ''}")
        if err := get(r, "job_detail", "error"):
            problems.append(f"- {r['customers']:,} customers, job error: `{err[:500]}`")
        for step in get(r, "job_detail", "steps") or []:
            if step.get("status") == "failure":
                problems.append(f"- {r['customers']:,} customers, step {step['step']} failed: "
                                f"`{step.get('error', '')[:500]}`")
    if problems:
        lines += ["", "## Failures", "", *problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_job":
        p = argparse.ArgumentParser()
        p.add_argument("--out", required=True)
        p.add_argument("--snapshot", default="latest")
        p.add_argument("--partition-mode", choices=("partition", "range"), default="partition")
        return job_main(p.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[10_000, 200_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--snapshot", default="latest", help="partition key, default the latest monthly snapshot")
    parser.add_argument("--partition-mode", choices=("partition", "range"), default="partition",
                        help="tag the run with dagster/partition, or with a one-snapshot partition range")
    parser.add_argument("--spark-submit-args", default=None,
                        help="PYSPARK_SUBMIT_ARGS for the job phase, e.g. '--driver-memory 8g pyspark-shell'")
    parser.add_argument("--phase-timeout", type=float, default=None, help="seconds; kill a phase after this")
    parser.add_argument("--tmp-root", default=None, help="where the temporary AIML/Dagster homes go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each phase, wait up to this long for other processes to leave the CPUs idle")
    parser.add_argument("--out", default=str(RESULTS_DIR / "features_scale.md"))
    parser.add_argument("--report-only", metavar="RESULTS_JSON", help="re-render the table from a raw results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        text = report(json.loads(Path(args.report_only).read_text()), args)
        Path(args.out).write_text(text)
        print(text)
        return 0
    if not Path(TIME_BIN).exists():
        raise SystemExit(f"{TIME_BIN} is missing: apt-get install time")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = RESULTS_DIR / "raw" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.customers:
        results.append(bench_size(n, args, run_dir))
        (run_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        text = report(results, args)  # rewritten after every size, so a long run shows progress
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    print(f"written {args.out}; raw results and logs in {run_dir}")
    return 0 if all(r.get("job_detail", {}).get("success") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
