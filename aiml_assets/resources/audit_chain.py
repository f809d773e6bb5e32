"""What makes the audit log tamper-evident: the Delta log replayed action by action, a hash chain over the events,
and the chain's head kept in Dagster's instance (outside the audit bucket).

`replay` reads every commit file in `_delta_log` (through delta-rs' own object store, so a folder and s3:// alike) and
accepts only a table created append-only whose later commits add new files: no remove, no re-added or foreign path,
no deletion vector, no metadata or protocol change, no missing version. `chained` orders the events by their links
and recomputes every hash. `check_head` compares the chain with the last head the instance recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import unquote

import pyarrow.dataset as ds
import pyarrow.fs as pafs
from dagster import AssetObservation, AssetRecordsFilter, DagsterInstance
from deltalake.exceptions import TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from aiml_assets.keys import AUDIT_HEAD_KEY as HEAD_KEY

GENESIS = "0" * 64  # the prev_hash of the first event
COMMIT_FILE = re.compile(r"_delta_log/(\d{20})\.json$")
LATER_ACTIONS = {"commitInfo", "add"}  # what a commit after the table's creation may hold
CREATE_ACTIONS = {"commitInfo", "protocol", "metaData"}


class TamperedLog(RuntimeError):
    """The audit log's files are not the append-only, hash-chained record it must be (the message says why)."""


@dataclass(frozen=True)
class Replay:
    version: int  # the newest commit
    paths: tuple[str, ...]  # data files in the order their commits added them


@dataclass(frozen=True)
class Head:
    events: int
    event_hash: str
    version: int


def event_hash(event: dict, key: bytes) -> str:
    """HMAC-SHA256 under the environment's audit key over a canonical JSON of the event's fields and the previous
    event's hash: whoever can write the bucket but lacks the key cannot add, alter or rebuild a linked event."""
    fields = {key: value for key, value in event.items() if key != "event_hash"}
    fields["recorded_at"] = fields["recorded_at"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def filesystem(location: str, storage_options: dict[str, str]) -> pafs.FileSystem | None:
    """The table's files through delta-rs' object store; None if a local folder does not exist."""
    try:
        return pafs.PyFileSystem(DeltaStorageHandler(location, storage_options or None))
    except TableNotFoundError:
        return None


def replay(fs: pafs.FileSystem) -> Replay | None:
    """The table's commits, checked action by action (labels are ignored); None if it has none."""
    files = fs.get_file_info(pafs.FileSelector("_delta_log", allow_not_found=True))
    commits = sorted((int(m.group(1)), info.path) for info in files if (m := COMMIT_FILE.search(info.path)))
    # the log writes no checkpoint: one would let Delta's readers start from a state the replay never checked
    if foreign := sorted(info.path for info in files if not COMMIT_FILE.search(info.path)):
        raise TamperedLog(f"_delta_log holds {', '.join(foreign[:3])}: only commit files belong there")
    if not commits:
        return None
    if missing := sorted(set(range(commits[-1][0] + 1)) - {version for version, _ in commits}):
        raise TamperedLog(f"commit file(s) of version {', '.join(map(str, missing[:5]))} are missing")
    paths: list[str] = []
    for version, file in commits:
        with fs.open_input_stream(file) as stream:
            text = stream.read().decode(errors="replace")
        try:
            for action in (json.loads(line) for line in text.splitlines() if line.strip()):
                _check_action(version, action, paths)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not the JSON actions Delta writes
            raise TamperedLog(f"version {version}'s commit file is not a Delta commit ({type(exc).__name__})") from exc
    return Replay(version=commits[-1][0], paths=tuple(paths))


def _check_action(version: int, action: dict, paths: list[str]) -> None:
    (kind, body), = action.items()
    if kind == "metaData" and (body.get("configuration") or {}).get("delta.appendOnly") != "true":
        raise TamperedLog(f"version {version} makes it not append-only (delta.appendOnly is not true)")
    if kind not in (CREATE_ACTIONS if version == 0 else LATER_ACTIONS):
        raise TamperedLog(f"version {version} holds a {kind!r} action; only appends are allowed")
    if kind != "add":
        return
    path = unquote(body["path"])
    if not body.get("dataChange") or body.get("deletionVector"):
        raise TamperedLog(f"version {version} adds {path} without appending it (dataChange false or a deletion "
                          "vector)")
    if "://" in path or path.startswith("/") or ".." in path.split("/"):
        raise TamperedLog(f"version {version} adds a file outside the table: {path}")
    if path in paths:
        raise TamperedLog(f"version {version} adds {path} again; each data file is added once")
    paths.append(path)


def rows(fs: pafs.FileSystem, replayed: Replay, schema) -> list[dict]:
    """Every row of the replayed data files; a missing or unreadable file is tampering, not an empty log."""
    if not replayed.paths:
        return []
    try:
        return ds.dataset(list(replayed.paths), schema=schema, format="parquet", filesystem=fs).to_table().to_pylist()
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several kinds; each names the file)
        raise TamperedLog(f"its data files cannot be read: {type(exc).__name__}: {exc}") from exc


def chained(events: list[dict], key: bytes) -> list[dict]:
    """`events` oldest first, following the links from GENESIS; refuses a fork, a broken link, a forged hash or an
    event id used twice."""
    if unhashed := [event["event_id"] for event in events if not event["event_hash"]]:
        raise TamperedLog(f"event {unhashed[0]} has no hash: the log predates the hash chain or was altered")
    if len({event["event_id"] for event in events}) != len(events):
        raise TamperedLog("an event id is used twice: an event was copied")
    by_prev: dict[str, dict] = {}
    for event in events:
        if (twin := by_prev.setdefault(event["prev_hash"], event)) is not event:
            raise TamperedLog(f"events {twin['event_id']} and {event['event_id']} both follow {event['prev_hash']}: "
                              "the chain forked")
    ordered, prev = [], GENESIS
    while (event := by_prev.get(prev)) is not None:
        if not hmac.compare_digest(event_hash(event, key), event["event_hash"]):
            raise TamperedLog(f"event {event['event_id']} (#{len(ordered) + 1}) does not match its hash under the "
                              "environment's audit key: it was altered or forged")
        ordered.append(event)
        prev = event["event_hash"]
    if len(ordered) != len(events):
        raise TamperedLog(f"{len(events) - len(ordered)} event(s) are not linked to the chain from its first event")
    return ordered


HEADS_READ = 20  # appenders racing may record their heads out of order: the longest of the latest few counts


def latest_head(instance: DagsterInstance, location: str) -> Head | None:
    records = instance.fetch_observations(AssetRecordsFilter(asset_key=HEAD_KEY, asset_partitions=[location]),
                                          limit=HEADS_READ).records
    heads = [Head(*(r.asset_observation.metadata[k].value for k in ("events", "event_hash", "version")))
             for r in records]
    return max(heads, key=lambda head: head.events, default=None)


def record_head(instance: DagsterInstance, location: str, head: Head) -> None:
    instance.report_runless_asset_event(AssetObservation(
        asset_key=HEAD_KEY, partition=location, description="the audit log's chain head",
        metadata={"events": head.events, "event_hash": head.event_hash, "version": head.version}))


def check_head(head: Head | None, ordered: list[dict]) -> None:
    """Refuse a chain that lacks the head Dagster's instance recorded: its newest events or the table were deleted,
    or it was rebuilt."""
    if head is None:
        return
    recorded = f"Dagster's instance recorded {head.events} event(s) up to version {head.version}"
    if not ordered:
        raise TamperedLog(f"the table is missing or empty but {recorded}: it was deleted")
    if len(ordered) < head.events:
        raise TamperedLog(f"it holds {len(ordered)} event(s) but {recorded}: events were deleted")
    if ordered[head.events - 1]["event_hash"] != head.event_hash:
        raise TamperedLog(f"event #{head.events} is not the one {recorded}: the chain was rewritten")
