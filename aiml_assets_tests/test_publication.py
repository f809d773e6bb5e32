"""The CDP's exactly-once publication protocol on real delta-rs tables, the SQLite catalog, the local bucket and the
audit log, without Spark: two publishers at once (threads held together at the step they race on), and a real
SIGKILL of a publishing process at each step, then a rerun."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from aiml_assets.resources.audit import PUBLICATION, PUBLICATION_STARTED, AuditLog
from aiml_assets.publication.protocol import MARKER, Candidate, publish_once
from aiml_assets.resources.catalog import LocalCatalog
from aiml_assets.resources.storage import LocalStorage

NAME = "edp.cdp.nba_propensity"
FIRST, EARLIER, LATER = "2026-10-30", "2026-10-31", "2026-11-01"
SWITCH = dict(owner="aiml-data-product-owners", comment="NBA propensity", properties={},
              read_grants=["edp-tenant-marketing"])


class Platform:
    """One AIML home: its publication and audit buckets, catalog and audit log, as each process builds them."""

    def __init__(self, home: Path):
        self.storage = LocalStorage(home=str(home), buckets={"publication": "buckets/prod", "audit": "audit"})
        self.catalog, self.audit = LocalCatalog(home=str(home)), AuditLog.in_bucket(self.storage)
        self.writes: list[str] = []

    @staticmethod
    def scores(day: str) -> pa.Table:
        return pa.table({"customer_id": ["C1", "C2", "C3"], "snapshot_date": [day] * 3, "score": [0.1, 0.5, 0.9]})

    def candidate(self, day: str) -> Candidate:
        version_id = hashlib.sha256(day.encode()).hexdigest()[:16]
        return Candidate(NAME, version_id, day, f"cdp/nba_propensity/versions/{version_id}",
                         {"cdp_version": version_id, "snapshot_date": day})

    def write(self, day: str):
        def write(location: str) -> None:
            self.writes.append(location)
            write_deltalake(location, self.scores(day), mode="error")
        return write

    def gate(self, day: str):
        def gate(location: str) -> list[str]:  # the real gate's last rule: the version holds the scores it names
            return [] if DeltaTable(location).to_pyarrow_table().equals(self.scores(day)) else ["other rows"]
        return gate

    def publish(self, day: str, *, catalog=None, audit=None, write=None, gate=None, run_id="run"):
        return publish_once(self.candidate(day), catalog=catalog or self.catalog, audit=audit or self.audit,
                            storage=self.storage, write=write or self.write(day), gate=gate or self.gate(day),
                            event=dict(actor="schedule:daily_scoring", environment="local", run_id=run_id),
                            switch=SWITCH)

    def serves(self) -> str | None:
        return (self.catalog.published(NAME) or {}).get("cdp_version")

    def publications(self, day: str) -> list[dict]:
        version_id = self.candidate(day).version_id
        return [e for e in self.audit.read(PUBLICATION) if e["details"]["cdp_version"] == version_id]

    def version_folder(self, day: str) -> Path:
        return Path(self.storage.uri("publication", self.candidate(day).folder))


@pytest.fixture
def platform(tmp_path):
    platform = Platform(tmp_path)
    assert platform.publish(FIRST).published
    return platform


def assert_published_once(platform: Platform, day: str):
    """The catalog serves the day's version, its table was committed once, and one event records the switch."""
    folder, version_id = platform.version_folder(day), platform.candidate(day).version_id
    assert platform.serves() == version_id
    location = platform.catalog.location(NAME)
    assert Path(location).parent == folder and (folder / MARKER).is_file()
    assert [c["operation"] for c in DeltaTable(location).history()] == ["WRITE"]  # version 0 only: never rewritten
    assert DeltaTable(location).to_pyarrow_table().equals(Platform.scores(day))
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, Path(location).name])  # no other attempt
    assert len(platform.publications(day)) == 1


def test_a_version_is_written_and_switched_once_and_a_rerun_changes_nothing(platform):
    before = platform.catalog.entry(NAME)
    assert platform.publish(LATER).published
    assert_published_once(platform, LATER)
    switched, writes = platform.catalog.entry(NAME), len(platform.writes)
    assert switched != before and platform.publications(LATER)[0]["details"]["replaced"] == before["properties"][
        "cdp_version"]
    rerun = platform.publish(LATER)
    assert (rerun.published, rerun.reason) == (False, "same scores as the published version")
    assert len(platform.writes) == writes and platform.catalog.entry(NAME) == switched  # nothing written, switched
    assert_published_once(platform, LATER)


class HeldAt:
    """Holds each of two publishers at `step` until both have reached it, then lets `first` through before the
    other: the race the protocol must win, made certain."""

    def __init__(self, first: str):
        self.both, self.first, self.done = threading.Barrier(2, timeout=60), first, threading.Event()

    def step(self, run_id: str, action):
        self.both.wait()
        if run_id != self.first:
            assert self.done.wait(60)
        try:
            return action()
        finally:
            if run_id == self.first:
                self.done.set()


class CatalogHeldAtTheSwitch:
    """The catalog, with both publishers held at their first switch until both have read what it serves."""

    def __init__(self, catalog: LocalCatalog, held: HeldAt, run_id: str):
        self.catalog, self.held, self.run_id, self.calls = catalog, held, run_id, 0

    def published(self, name):
        return self.catalog.published(name)

    def publish(self, name, location, **switch):
        self.calls += 1
        if self.calls > 1:  # a retry after losing the race: nothing to hold
            return self.catalog.publish(name, location, **switch)
        return self.held.step(self.run_id, lambda: self.catalog.publish(name, location, **switch))


def race(*publishers):
    outcomes, errors = {}, []

    def run(run_id, publish):
        try:
            outcomes[run_id] = publish()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=p) for p in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return outcomes


def test_two_publishers_of_the_same_day_past_the_existence_check_commit_the_version_once(platform):
    held = HeldAt(first="a")

    def publisher(run_id):
        write = platform.write(LATER)
        return run_id, lambda: platform.publish(
            LATER, run_id=run_id, write=lambda location: held.step(run_id, lambda: write(location)))
    outcomes = race(publisher("a"), publisher("b"))
    later = [w for w in platform.writes if Path(w).parent == platform.version_folder(LATER)]
    assert len(later) == 2  # both found no version and wrote an attempt; one became the version, one went
    assert sorted(o.published for o in outcomes.values()) == [False, True]
    assert {o.location for o in outcomes.values()} == {platform.catalog.location(NAME)}
    assert_published_once(platform, LATER)


def test_two_publishers_of_the_same_day_past_the_catalog_check_switch_once(platform):
    held = HeldAt(first="a")
    outcomes = race(*[(run_id, lambda run_id=run_id: platform.publish(
        LATER, run_id=run_id, catalog=CatalogHeldAtTheSwitch(platform.catalog, held, run_id))) for run_id in "ab"])
    assert outcomes["a"].published and not outcomes["b"].published
    assert "same scores as the published version (by a publisher running beside this one)" == outcomes["b"].reason
    assert_published_once(platform, LATER)


@pytest.mark.parametrize("first", [EARLIER, LATER])
def test_of_two_days_switching_at_once_the_later_day_is_served_in_either_order(platform, first):
    held = HeldAt(first=first)
    outcomes = race(*[(day, lambda day=day: platform.publish(
        day, run_id=day, catalog=CatalogHeldAtTheSwitch(platform.catalog, held, day))) for day in (EARLIER, LATER)])
    assert outcomes[LATER].published
    assert_published_once(platform, LATER)
    if first == LATER:  # the earlier day lost the compare-and-swap, read again, and never replaced the later one
        assert not outcomes[EARLIER].published and "a later scoring day (2026-11-01)" in outcomes[EARLIER].reason
        assert platform.publications(EARLIER) == []
        assert len([e for e in platform.audit.read(PUBLICATION_STARTED) if e["run_id"] == EARLIER]) == 1
    else:  # the earlier day switched first; the later one lost, read again and replaced it
        assert outcomes[EARLIER].published and outcomes[LATER].replaced == platform.candidate(EARLIER).version_id


def test_the_local_instance_runs_one_publication_step_at_a_time_as_the_remote_one_does(tmp_path, monkeypatch):
    from dagster import DagsterInstance

    from aiml_assets.publication.cdp import cdp_assets
    from aiml_assets.settings import load_settings

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "deployments" / "dagster" / "local" / "dagster.yaml", home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    publication = cdp_assets(load_settings("local"))[0]
    assert publication.op.pool == "cdp_publication"


# --- a real kill -9 at each step --------------------------------------------------------------------------------

STEPS = ("writing", "written", "gated", "started", "switched", "recorded")


def _killed_at(platform: Platform, day: str, step: str):
    """Publish `day`, killing this process at `step`."""
    def kill(at: str):
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def write(location):
        if step == "writing":  # a data file down, no commit yet
            os.makedirs(location)
            Path(location, "part-0.parquet").write_bytes(b"PAR1")
        kill("writing")
        platform.write(day)(location)
        kill("written")

    def gate(location):
        kill("gated")
        return platform.gate(day)(location)

    class Catalog:
        published = platform.catalog.published

        def publish(self, *args, **kwargs):
            kill("started")
            platform.catalog.publish(*args, **kwargs)
            kill("switched")

    class Audit:
        read = platform.audit.read

        def record(self, action, *args, **kwargs):
            event = platform.audit.record(action, *args, **kwargs)
            if action == PUBLICATION:
                kill("recorded")
            return event

    platform.publish(day, catalog=Catalog(), audit=Audit(), write=write, gate=gate, run_id="killed")


@pytest.mark.parametrize("step", STEPS)
def test_a_publisher_killed_at_any_step_leaves_a_state_the_rerun_completes_exactly_once(platform, tmp_path, step):
    before = platform.serves()
    killed = subprocess.run([sys.executable, __file__, str(tmp_path), LATER, step], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if STEPS.index(step) < STEPS.index("switched"):
        assert platform.serves() == before
    else:
        assert platform.serves() == platform.candidate(LATER).version_id
    # killed between the switch and the audit event: the catalog serves a version the audit log does not show
    assert len(platform.publications(LATER)) == (1 if step == "recorded" else 0)

    rerun = platform.publish(LATER, run_id="rerun")
    assert rerun.published == (STEPS.index(step) < STEPS.index("switched"))
    assert rerun.repaired == (step == "switched")
    if step == "switched":
        assert platform.publications(LATER)[0]["details"]["repaired"] is True
    folder = platform.version_folder(LATER)
    live = {Path(platform.catalog.location(NAME)).name, MARKER}
    orphans = {p.name for p in folder.iterdir()} - live
    assert len(orphans) == (1 if step in ("writing", "written") else 0)  # a killed attempt nothing reads
    for orphan in orphans:
        (folder / orphan).rename(tmp_path / orphan)
    assert_published_once(platform, LATER)
    assert platform.publish(LATER, run_id="again").reason == "same scores as the published version"
    assert len(platform.publications(LATER)) == 1


def test_a_version_whose_event_was_lost_gets_it_from_the_publisher_that_replaces_it(platform, tmp_path):
    """Killed between the switch and its event, then replaced by a later day before any rerun of its own: the log
    must still show that the name served it."""
    killed = subprocess.run([sys.executable, __file__, str(tmp_path), EARLIER, "switched"], capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert platform.publications(EARLIER) == []
    assert platform.publish(LATER).published
    [recorded] = platform.publications(EARLIER)
    assert recorded["details"]["repaired"] is True and recorded["details"]["snapshot_date"] == EARLIER
    assert platform.publications(LATER)[0]["details"]["replaced"] == platform.candidate(EARLIER).version_id


if __name__ == "__main__":
    _killed_at(Platform(Path(sys.argv[1])), sys.argv[2], sys.argv[3])
