"""The audit log: who did what, when, in which environment, under which run and change request.

An append-only Delta table in the environment's `audit` bucket (a folder under the AIML home locally, S3 remotely).
The table is created with `delta.appendOnly=true`, so the Delta protocol refuses any commit that removes rows
(delete, update, merge, overwrite). delta-rs 1.6.6 still lets `restore` drop rows and lets anyone unset the property;
both leave commits in the table's history, so every read and write first checks that the history holds nothing but
appends and refuses a log that was rewritten. That detects tampering through Delta; it cannot stop someone with
write access to the bucket from deleting files, which only the bucket's own policy (deny deletes, Object Lock) can.
"""

import getpass
import json
import os
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone

import pyarrow as pa
from dagster import ConfigurableResource
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from aiml_assets.resources.storage import S3Storage, Storage

AUDIT_ROLE = "audit"  # bucket role in resources/<env>.yaml
AUDIT_TABLE = "audit_log"
APPEND_ONLY = {"delta.appendOnly": "true"}
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
])

# Who started a run: Dagster+ sets dagster/user; our CLI and CI set aiml/requested_by.
ACTOR_TAGS = ("dagster/user", "aiml/requested_by")
ACTOR_ENV_VARS = ("GITLAB_USER_LOGIN", "AIML_USER")


class AuditLogError(RuntimeError):
    """The audit log cannot be written or read as an append-only record."""


# A run without a user tag is named after what launched it.
LAUNCHER_TAGS = (("dagster/schedule_name", "schedule"), ("dagster/sensor_name", "sensor"),
                 ("dagster/backfill", "backfill"))


def actor(context=None) -> str:
    """Who is acting: the run's user (`context`), else who launched it."""
    return actor_of(context.run.tags if context is not None else {})


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

    @classmethod
    def in_bucket(cls, storage: Storage) -> "AuditLog":
        options = {"AWS_REGION": storage.region} if isinstance(storage, S3Storage) else {}
        if isinstance(storage, S3Storage) and storage.endpoint_url:
            options["AWS_ENDPOINT_URL"] = storage.endpoint_url
        return cls(location=storage.uri(AUDIT_ROLE, AUDIT_TABLE), storage_options=options)

    def record(self, action: str, subject: str, *, actor: str, environment: str, run_id: str | None,
               change_request: str | None = None, details: dict | None = None) -> dict:
        """Append one event and return it."""
        for field, value in (("action", action), ("subject", subject), ("actor", actor), ("environment", environment)):
            if not value or not str(value).strip():
                raise AuditLogError(f"audit event needs a non-empty {field}")
        event = {
            "event_id": uuid.uuid4().hex, "recorded_at": datetime.now(timezone.utc), "environment": environment,
            "actor": actor, "action": action, "subject": subject, "run_id": run_id,
            "change_request": change_request, "details": json.dumps(details or {}, sort_keys=True, default=str),
        }
        self._table(create=True)
        write_deltalake(self.location, pa.Table.from_pylist([event], schema=SCHEMA), mode="append",
                        storage_options=self.storage_options or None,
                        commit_properties=CommitProperties(custom_metadata={RUN_ID_KEY: run_id or ""}))
        return event

    def read(self, action: str | None = None) -> list[dict]:
        """Every event (or every `action` event), oldest first, with `details` decoded."""
        table = self._table(create=False)
        if table is None:
            return []
        rows = table.to_pyarrow_table(filters=[("action", "=", action)] if action else None).sort_by(
            "recorded_at").to_pylist()
        return [{**row, "details": json.loads(row["details"] or "{}")} for row in rows]

    def verify(self) -> None:
        """Refuse a log that is not append-only or whose history holds anything but appends."""
        self._table(create=False)

    def _table(self, *, create: bool) -> DeltaTable | None:
        try:
            table = DeltaTable(self.location, storage_options=self.storage_options or None)
        except TableNotFoundError:
            if not create:
                return None
            table = DeltaTable.create(self.location, SCHEMA, mode="ignore", configuration=APPEND_ONLY,
                                      storage_options=self.storage_options or None)
        _check_append_only(table, self.location)
        return table


def _check_append_only(table: DeltaTable, location: str) -> None:
    if table.metadata().configuration.get("delta.appendOnly") != "true":
        raise AuditLogError(f"{location}: audit log is not append-only (delta.appendOnly is not true)")
    for commit in table.history():
        operation, mode = commit.get("operation"), commit.get("operationParameters", {}).get("mode")
        if not (operation == "CREATE TABLE" or (operation == "WRITE" and mode == "Append")):
            raise AuditLogError(f"{location}: audit log was rewritten: version {commit.get('version')} is "
                                f"{operation} {mode or ''}".rstrip() + "; only appends are allowed")
