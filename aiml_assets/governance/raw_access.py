"""Raw bucket exceptions: sources are read by catalog name; a bucket path only under an entry of
`deployments/governance/raw_bucket_exceptions.yaml` that covers it, is for this environment, was approved on or before
today by the CTO and the CDAO (two different people) and has not expired: the expiry day is the last valid day, and
an expiry over 180 days after the later approval is refused as unbounded. The register is read at every authorisation,
so a removed or expired entry stops reads at once. `file://` prefixes are for local only, whose buckets are folders.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator
from pyspark.sql import DataFrame, SparkSession

from aiml_assets.governance.registers import RegisterError, load_entries
from aiml_assets.keys import CHANGE_REQUEST
from aiml_assets.resources.audit import AuditLog, actor_of
from aiml_assets.settings import DEPLOYMENTS_DIR, ENVIRONMENTS, _Strict

REGISTER = DEPLOYMENTS_DIR / "governance" / "raw_bucket_exceptions.yaml"
MAX_TERM = timedelta(days=180)
RAW_READ, RAW_READ_REFUSED = "raw_read", "raw_read_refused"  # audit actions
# Plain segments only: Spark expands globs, braces and commas, and resolves '..', into paths outside a prefix.
_URI = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]|file://)(/[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*)*/?$")
_NOT_PLAIN = "it is not a plain s3:// (locally file://) URI: no '.', '..' or empty segments, globs, commas or escapes"


class RawAccessRefused(PermissionError):
    """A raw bucket read that no exception in force allows; nothing was read."""


class Approval(_Strict):
    role: Literal["CTO", "CDAO"]
    name: str = Field(pattern=r"\S")
    approved_on: date


class RawBucketException(_Strict):
    id: str = Field(pattern=r"^RAW-[0-9]{4}-[0-9]{3}$")
    uri_prefix: str
    environments: list[Literal[ENVIRONMENTS]] = Field(min_length=1)
    purpose: str = Field(pattern=r"\S")
    requested_by: str = Field(pattern=r"\S")
    change_request: str = Field(pattern=CHANGE_REQUEST.pattern)
    approvals: list[Approval]  # authorise refuses the entry until both the CTO and the CDAO have approved it
    expires: date

    @model_validator(mode="after")
    def _well_formed(self) -> RawBucketException:
        if not _URI.match(self.uri_prefix) or not self.uri_prefix.endswith("/"):
            raise ValueError(f"uri_prefix: {self.uri_prefix!r} is not s3://bucket/prefix/ ending in /: {_NOT_PLAIN}")
        if self.uri_prefix.startswith("file://") and self.environments != ["local"]:
            raise ValueError(f"uri_prefix: a file:// prefix is for environments [local] only, not {self.environments}")
        for field, values in (("environments", self.environments), ("approvals", [a.role for a in self.approvals])):
            if len(set(values)) != len(values):
                raise ValueError(f"{field}: each at most once, got {values}")
        return self


def load_register(path: Path = REGISTER) -> list[RawBucketException]:
    return load_entries(path, "exceptions", RawBucketException, "exception")


def refusal(entry: RawBucketException, environment: str, today: date) -> str | None:
    """Why `entry` does not allow a read in `environment` today, or None if it does."""
    if environment not in entry.environments:
        return f"it is for {', '.join(entry.environments)}, not {environment}"
    approvals = {approval.role: approval for approval in entry.approvals}
    for role in ("CTO", "CDAO"):
        if role not in approvals:
            return f"it lacks {role} approval (the CTO and the CDAO must both approve)"
        if approvals[role].approved_on > today:
            return f"its {role} approval is dated {approvals[role].approved_on}, after today ({today})"
    cto, cdao = (" ".join(approvals[role].name.split()).casefold() for role in ("CTO", "CDAO"))
    if cto == cdao:
        return f"the CTO and CDAO approvals are both by {approvals['CTO'].name}; they must be two different people"
    approved = max(approval.approved_on for approval in entry.approvals)
    if entry.expires < today:
        return f"it expired on {entry.expires}"
    if entry.expires - approved > MAX_TERM:
        return f"it is unbounded: it expires {entry.expires}, over {MAX_TERM.days} days after approval on {approved}"
    return None


def authorise(uri: str, *, environment: str, today: date, register: Path = REGISTER) -> RawBucketException:
    """The exception that allows reading `uri` in `environment` today; refuses with the reason otherwise."""
    if not _URI.match(uri):
        raise RawAccessRefused(f"raw read of {uri!r} refused: {_NOT_PLAIN}")
    reasons = [(e, refusal(e, environment, today)) for e in load_register(register) if uri.startswith(e.uri_prefix)]
    if not reasons:
        raise RawAccessRefused(f"raw read of {uri} refused: no exception in {register} covers it; read sources by "
                               "catalog name (catalog.schema.table), or record an exception the CTO and CDAO approve")
    if allowed := next((entry for entry, reason in reasons if reason is None), None):
        return allowed
    raise RawAccessRefused(f"raw read of {uri} in {environment} refused: "
                           + "; ".join(f"{entry.id} ({entry.uri_prefix}): {reason}" for entry, reason in reasons))


def read_raw(spark: SparkSession, uri: str, *, environment: str, audit: AuditLog | None = None,
             actor: str | None = None, run_id: str | None = None, today: date | None = None, format: str = "parquet",
             register: Path = REGISTER) -> DataFrame:
    """The DataFrame at `uri`, read only once `authorise` allowed it and the audit log (if given) recorded that."""
    def note(action: str, **fields) -> None:
        if audit is not None:
            audit.record(action, uri, actor=actor or actor_of({}), environment=environment, run_id=run_id, **fields)

    try:
        entry = authorise(uri, environment=environment, register=register,
                          today=today or datetime.now(ZoneInfo("Europe/London")).date())
    except (RawAccessRefused, RegisterError) as exc:
        note(RAW_READ_REFUSED, details={"reason": str(exc)})
        raise
    note(RAW_READ, change_request=entry.change_request, details={"exception": entry.id, "format": format})
    return spark.read.format(format).load(uri)
