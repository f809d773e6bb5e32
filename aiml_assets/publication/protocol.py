"""Publishing a CDP version exactly once, whatever runs beside it and wherever it is killed.

1. The version is written once. Its data is committed to a fresh attempt folder `<folder>/<attempt>`; the version
   exists when its marker `<folder>/VERSION.json` is created (`Storage.create`: a hard link locally, S3 IfNoneMatch
   remotely) naming that attempt. Of racing writers exactly one creates the marker; the others remove their attempt
   and use the marker's, so no committed version is ever rewritten, and a writer that finds the marker writes
   nothing. A writer killed before its marker leaves an attempt nothing reads. (Each attempt folder is new, so the
   table writer never finds a table there to overwrite, locally or on S3.)
2. The publish gate runs on the version's table.
3. The catalog switch is a compare-and-swap on the version read (`Catalog.publish(replaces=...)`); a lost one
   re-reads and decides again, so an earlier day never replaces a later one however they race.
4. `publication_started` before the switch, `publication` after. A publisher killed between the switch and the
   event leaves the catalog on a version the audit log does not show: the next publisher of that version finds it
   served without its event, completes the switch again (idempotent) and records the event (`repaired`); a publisher
   replacing it first records it the same way before its own switch. Two such
   repairs at once could both record it; the `cdp_publication` pool runs one publication step at a time.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from aiml_assets.resources.audit import PUBLICATION, PUBLICATION_REFUSED, PUBLICATION_STARTED, AuditLog
from aiml_assets.resources.catalog import Catalog, PublicationConflict
from aiml_assets.resources.storage import Storage

ROLE = "publication"  # the bucket role versions live in
MARKER = "VERSION.json"
SWITCH_ATTEMPTS = 5
_ATTEMPT = re.compile(r"[0-9a-f]{32}")


class GateRefused(RuntimeError):
    """The publish gate failed on the version; the name still serves `serving`."""

    def __init__(self, failures: list[str], serving: str | None):
        super().__init__("; ".join(failures))
        self.failures, self.serving = failures, serving


class VersionError(RuntimeError):
    """A version marker that does not name an attempt folder of its version."""


@dataclass(frozen=True)
class Candidate:
    name: str  # the catalog name
    version_id: str
    day: str
    folder: str  # the version's key in the publication bucket
    details: dict = field(default_factory=dict)  # for the audit events


@dataclass(frozen=True)
class Outcome:
    published: bool
    location: str | None = None
    reason: str | None = None
    replaced: str | None = None
    repaired: bool = False  # a missing publication event was recorded


def not_publishable(current: dict, version_id: str, day: str) -> str | None:
    """Why the version must not replace what the name serves now, if it must not."""
    if current.get("cdp_version") == version_id:
        return "same scores as the published version"
    if str(current.get("snapshot_date", "")) > day:
        return f"a later scoring day ({current['snapshot_date']}) is published; an earlier one never replaces it"
    return None


def committed_version(storage: Storage, folder: str, write: Callable[[str], None], run_id: str | None) -> str:
    """The location of the version's one committed table: the marker's, else written now and claimed."""
    if (found := _marked(storage, folder)) is not None:
        return found
    attempt = uuid.uuid4().hex
    write(storage.uri(ROLE, f"{folder}/{attempt}"))
    if storage.create(ROLE, f"{folder}/{MARKER}", json.dumps({"attempt": attempt, "run_id": run_id}).encode()):
        return storage.uri(ROLE, f"{folder}/{attempt}")
    for item in list(storage.list(ROLE, f"{folder}/{attempt}/")):  # another writer claimed it first
        storage.delete(ROLE, item.key)
    return _marked(storage, folder)


def _marked(storage: Storage, folder: str) -> str | None:
    key = f"{folder}/{MARKER}"
    try:
        marker = json.loads(storage.get(ROLE, key))
    except FileNotFoundError:
        return None
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    except ValueError:
        marker = None  # not the JSON a publisher writes: someone else's
    attempt = marker.get("attempt") if isinstance(marker, dict) else None
    if not isinstance(attempt, str) or not _ATTEMPT.fullmatch(attempt):
        raise VersionError(f"{storage.uri(ROLE, key)} names no attempt folder of the version ({marker!r}); if no "
                           "catalog serves the version, remove the marker and rerun to write it again")
    return storage.uri(ROLE, f"{folder}/{attempt}")


def _recorded(audit: AuditLog, name: str, version_id: str) -> bool:
    return any(e["subject"] == name and e["details"].get("cdp_version") == version_id for e in audit.read(PUBLICATION))


def publish_once(candidate: Candidate, *, catalog: Catalog, audit: AuditLog, storage: Storage,
                 write: Callable[[str], None], gate: Callable[[str], list[str]], event: dict,
                 switch: dict) -> Outcome:
    """Write, gate and switch to `candidate` (steps 1-4 above). `write(location)` commits the version's table there;
    `gate(location)` returns the failures of the publish gate on it; `event`: the audit events' subject-less fields
    (actor, environment, run_id); `switch`: the rest of `Catalog.publish`'s arguments."""
    name, version_id, day = candidate.name, candidate.version_id, candidate.day
    events = dict(subject=name, **event)
    switch = {**switch, "properties": {**switch["properties"], "snapshot_date": day}}  # what later ones compare
    # the audit log first: one that cannot be read as a true record stops the publication before anything changes
    recorded = _recorded(audit, name, version_id)
    current = catalog.published(name) or {}
    if current.get("cdp_version") == version_id:
        if recorded:
            return Outcome(False, reason=not_publishable(current, version_id, day))
        return _repair(candidate, catalog, audit, storage, events, switch)
    if reason := not_publishable(current, version_id, day):
        return Outcome(False, reason=reason)
    location = committed_version(storage, candidate.folder, write, event.get("run_id"))
    details = {**candidate.details, "location": location}
    if failures := gate(location):
        audit.record(PUBLICATION_REFUSED, **events, details={**details, "failures": failures})
        raise GateRefused(failures, current.get("cdp_version"))
    for _ in range(SWITCH_ATTEMPTS):
        current = catalog.published(name) or {}  # again, just before the switch
        if reason := not_publishable(current, version_id, day):
            return Outcome(False, location, reason + " (by a publisher running beside this one)")
        replaces = current.get("cdp_version")
        _record_served(audit, events, name, replaces)
        audit.record(PUBLICATION_STARTED, **events, details=details)
        try:
            catalog.publish(name, location, version_id=version_id, replaces=replaces, **switch)
        except PublicationConflict:
            continue
        audit.record(PUBLICATION, **events, details={**details, "replaced": replaces})
        return Outcome(True, location, replaced=replaces)
    raise PublicationConflict(f"{name}: version {version_id} lost the catalog switch {SWITCH_ATTEMPTS} times in a "
                              "row to other publishers; nothing of it was switched")


def _record_served(audit: AuditLog, events: dict, name: str, version_id: str | None) -> None:
    """Before a version is replaced: if its publisher died between the switch and its `publication` event, record
    that event now (from its `publication_started`), so the log shows every version the name ever served."""
    if version_id is None or _recorded(audit, name, version_id):
        return
    started = [e for e in audit.read(PUBLICATION_STARTED)
               if e["subject"] == name and e["details"].get("cdp_version") == version_id]
    details = started[-1]["details"] if started else {"cdp_version": version_id}
    audit.record(PUBLICATION, **events, details={**details, "repaired": True})


def _repair(candidate: Candidate, catalog: Catalog, audit: AuditLog, storage: Storage, events: dict,
            switch: dict) -> Outcome:
    """The catalog serves the version but no `publication` event records it: its publisher died after the switch."""
    location = _marked(storage, candidate.folder)
    if location is None:
        raise VersionError(f"{candidate.name} serves version {candidate.version_id}, which has no marker at "
                           f"{candidate.folder}/{MARKER}")
    catalog.publish(candidate.name, location, version_id=candidate.version_id, replaces=candidate.version_id,
                    **switch)
    audit.record(PUBLICATION, **events, details={**candidate.details, "location": location, "repaired": True})
    return Outcome(False, location, reason="same scores as the published version; its missing publication event "
                   "is now recorded", repaired=True)
