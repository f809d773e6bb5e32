"""The audit log: who did what, when, in which environment, under which run and change request.

An append-only Delta table in the environment's `audit` bucket (a folder under the AIML home locally, S3 remotely),
created with `delta.appendOnly=true`, one event per commit. Each event carries the hash of the one before it
(`prev_hash`, `event_hash`: a chain). Every read and every append first verifies the whole log (`audit_chain`): each
commit's actions are replayed (not its labels) and anything but an append of new files is refused; the chain is
followed and every hash recomputed, so an altered, removed, inserted or unreadable event is refused.

Someone who can write the bucket can still delete the newest commits, delete the table, or rebuild the chain with
fresh hashes. Against that, every append records the chain head (event count, last hash, version) as an observation
of `governance/audit_log` (partition: the log's location) in Dagster's instance, which lives outside the bucket, and
verification refuses a log that lacks it. The instance is the run's (or sensor's) when the log is a Dagster resource,
the one given to `for_instance`, else the one DAGSTER_HOME configures (a dagster.yaml there); without any, those three
attacks go unnoticed, which S3 Object Lock on the audit bucket (deployments/s3) prevents instead.

A log that fails verification refuses every read and append with an `AuditLogError` naming it and what failed, so
every control that must record its action stops.
"""

import getpass
import json
import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
from dagster import ConfigurableResource, DagsterInstance, InitResourceContext
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake.exceptions import CommitFailedError
from pydantic import PrivateAttr

from aiml_assets.resources import audit_chain as chain
from aiml_assets.resources.storage import S3Storage, Storage

AUDIT_ROLE = "audit"  # bucket role in resources/<env>.yaml
AUDIT_TABLE = "audit_log"
# old commit files must stay: verification replays the log from version 0
TABLE_CONFIGURATION = {"delta.appendOnly": "true", "delta.enableExpiredLogCleanup": "false"}
DEVELOPMENT_KEY = b"aiml-local-development-audit-key"  # not a secret: only where settings.audit.development_key
APPEND_ATTEMPTS = 20  # appends racing for the next version: each loser re-verifies and links the new head
RUN_ID_KEY = "dagster_run_id"  # commit metadata, as in resources/tables.py

PROMOTION = "promotion"
PROMOTION_REFUSED = "promotion_refused"
PROMOTION_STARTED = "promotion_started"  # recorded before anything changes, so a crash mid-way leaves a trace
PROMOTION_FAILED = "promotion_failed"
PUBLICATION_STARTED = "publication_started"  # before the catalog switch, so a crash mid-way leaves a trace
PUBLICATION = "publication"
PUBLICATION_REFUSED = "publication_refused"  # the publish gate failed; the published version stayed

SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("environment", pa.string(), nullable=False),  # the environment the action affects
    pa.field("actor", pa.string(), nullable=False),
    pa.field("action", pa.string(), nullable=False),
    pa.field("subject", pa.string(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("change_request", pa.string()),
    pa.field("details", pa.string()),  # JSON object
    pa.field("prev_hash", pa.string(), nullable=False),
    pa.field("event_hash", pa.string(), nullable=False),  # audit_chain.event_hash of the fields above
])

# Who started a run: Dagster+ sets dagster/user; our CLI and CI set aiml/requested_by.
ACTOR_TAGS = ("dagster/user", "aiml/requested_by")
ACTOR_ENV_VARS = ("GITLAB_USER_LOGIN", "AIML_USER")


class AuditLogError(RuntimeError):
    """The audit log cannot be written or read as an append-only record."""


# A run without a user tag is named after what launched it.
LAUNCHER_TAGS = (("dagster/schedule_name", "schedule"), ("dagster/sensor_name", "sensor"),
                 ("dagster/backfill", "backfill"))


def actor_of(tags: Mapping[str, str]) -> str:
    """Who started a run with these tags: its user tag, else its schedule, sensor or backfill; else who records: the
    CI user or AIML_USER, else the OS user."""
    for key in ACTOR_TAGS:
        if (tags.get(key) or "").strip():
            return tags[key].strip()
    for key, launcher in LAUNCHER_TAGS:
        if (tags.get(key) or "").strip():
            return f"{launcher}:{tags[key].strip()}"
    for name in (os.environ.get(key) for key in ACTOR_ENV_VARS):
        if name and name.strip():
            return name.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid:{os.getuid()}"


class AuditLog(ConfigurableResource):
    location: str  # the table's URI: a folder locally, s3://... remotely
    storage_options: dict[str, str] = {}
    key_env: str = "AIML_AUDIT_KEY"  # the variable holding the chain's HMAC key (settings.audit.key_env)
    development_key: bool = False  # local only: a fixed key when the variable is unset
    _instance: DagsterInstance | None = PrivateAttr(default=None)  # where the chain head is kept

    @classmethod
    def in_bucket(cls, storage: Storage, key_env: str = "AIML_AUDIT_KEY", development_key: bool = False) -> "AuditLog":
        # commits are create-if-absent puts (delta-rs 1.x's default, said explicitly): never a copy-then-delete
        # rename, which the audit bucket's deny-delete policy refuses
        # (and SSE-KMS under the environment's key, as every write to its buckets)
        s3 = isinstance(storage, S3Storage)
        options = storage.delta_storage_options() | {"AWS_CONDITIONAL_PUT": "etag"} if s3 else {}
        return cls(location=storage.uri(AUDIT_ROLE, AUDIT_TABLE), storage_options=options, key_env=key_env,
                   development_key=development_key)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._instance = context.instance

    def for_instance(self, instance: DagsterInstance | None) -> "AuditLog":
        """This log, keeping its chain head in `instance` (an executor's or a CLI's, which Dagster does not pass)."""
        bound = self.model_copy()
        bound._instance = instance or self._instance
        return bound

    def record(self, action: str, subject: str, *, actor: str, environment: str, run_id: str | None,
               change_request: str | None = None, details: dict | None = None) -> dict:
        """Verify the log, append one event linked to its newest and return it."""
        for field, value in (("action", action), ("subject", subject), ("actor", actor), ("environment", environment)):
            if not value or not str(value).strip():
                raise AuditLogError(f"audit event needs a non-empty {field}")
        event = {
            "event_id": uuid.uuid4().hex, "recorded_at": datetime.now(timezone.utc), "environment": environment,
            "actor": actor, "action": action, "subject": subject, "run_id": run_id,
            "change_request": change_request, "details": json.dumps(details or {}, sort_keys=True, default=str),
        }
        commit = CommitProperties(custom_metadata={RUN_ID_KEY: run_id or ""}, max_commit_retries=0)
        lost = None
        for _ in range(APPEND_ATTEMPTS):
            version, events = self._verified()
            if version is None:
                DeltaTable.create(self.location, SCHEMA, mode="ignore", configuration=TABLE_CONFIGURATION,
                                  storage_options=self.storage_options or None)
                continue  # verify what was created (here or by a racing writer)
            event["prev_hash"] = events[-1]["event_hash"] if events else chain.GENESIS
            event["event_hash"] = chain.event_hash(event, self.key())
            table = DeltaTable(self.location, version=version, storage_options=self.storage_options or None)
            try:  # at exactly version + 1: a writer that appended first makes this fail rather than fork the chain
                write_deltalake(table, pa.Table.from_pylist([event], schema=SCHEMA), mode="append",
                                commit_properties=commit,
                                post_commithook_properties=PostCommitHookProperties(
                                    create_checkpoint=False, cleanup_expired_logs=False))
            except CommitFailedError as exc:
                lost = exc
                continue
            if instance := self._head_store():
                chain.record_head(instance, self._head_partition, chain.Head(len(events) + 1, event["event_hash"],
                                                                      version + 1))
            return event
        raise AuditLogError(f"{self.location}: audit event not recorded: {APPEND_ATTEMPTS} attempts lost the race "
                            f"for the next version (last: {lost})")

    def read(self, action: str | None = None) -> list[dict]:
        """Every event (or every `action` event), oldest first, with `details` decoded, once the log verifies."""
        _, events = self._verified()
        return [{**event, "details": json.loads(event["details"] or "{}")} for event in events
                if action is None or event["action"] == action]

    def verify(self) -> None:
        """Refuse a log whose commits hold anything but appends, whose chain is broken or altered, or which lacks
        the head Dagster's instance recorded."""
        self._verified()

    def _verified(self) -> tuple[int | None, list[dict]]:
        """The newest version (None: no table) and the events in chain order."""
        try:
            fs = chain.filesystem(self.location, self.storage_options)
            replayed = chain.replay(fs) if fs else None
            events = chain.chained(chain.rows(fs, replayed, SCHEMA), self.key()) if replayed else []
            if instance := self._head_store():
                chain.check_head(chain.latest_head(instance, self._head_partition), events)
        except chain.TamperedLog as exc:
            raise AuditLogError(f"{self.location}: audit log failed verification: {exc}") from exc
        return (replayed.version if replayed else None), events

    @property
    def _head_partition(self) -> str:
        return self.location.rstrip("/")  # one log, however its location is spelled

    def key(self) -> bytes:
        """The environment's audit key (its variable; a Databricks secret remotely); locally a fixed development key
        when the variable is unset, since a local log proves nothing to anyone but its owner."""
        if key := os.environ.get(self.key_env, ""):
            return key.encode()
        if self.development_key:
            return DEVELOPMENT_KEY
        raise AuditLogError(f"{self.location}: the audit log needs its HMAC key in {self.key_env} (on Databricks, from "
                            "the environment's secret scope); without it no event can be recorded or verified")

    def _head_store(self) -> DagsterInstance | None:
        home = os.environ.get("DAGSTER_HOME", "")
        configured = home and (Path(home) / "dagster.yaml").is_file()
        return self._instance or (_configured_instance(home) if configured else None)


@lru_cache
def _configured_instance(dagster_home: str) -> DagsterInstance:
    """The instance a CLI or a daemon outside a run uses (DAGSTER_HOME with a dagster.yaml), opened once."""
    return DagsterInstance.get()
