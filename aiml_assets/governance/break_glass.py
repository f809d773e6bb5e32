"""Break-glass: emergency access to a locked environment (UAT, prod), granted in
`deployments/governance/break_glass.yaml`. A grant names one person, the reason and the incident, is approved by a
VP who is someone else, and lasts at most 2 hours; within its window that person's runs are accepted and audited.
A person whose earlier grant has no post-incident review gets no other grant until it has one.

Who launched a run is its `aiml/requested_by` tag (and, where the platform sets it, `dagster/user`, which must agree):
OSS Dagster does not authenticate launches, so a grant only widens what a person already able to launch may run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field

from aiml_assets.governance.launch_signature import REQUESTED_BY_TAG
from aiml_assets.governance.registers import load_entries
from aiml_assets.settings import DEPLOYMENTS_DIR, ENVIRONMENTS, _Strict

REGISTER = DEPLOYMENTS_DIR / "governance" / "break_glass.yaml"
MAX_WINDOW = timedelta(hours=2)
GRANT_TAG = "aiml/break_glass"
_PERSON = r"^[a-z][a-z0-9._-]{1,63}$"


class Approval(_Strict):
    role: Literal["VP"]
    name: str = Field(pattern=_PERSON)
    approved_at: AwareDatetime


class Review(_Strict):
    record: str = Field(pattern=r"^PIR-[0-9]{4}-[0-9]{3}$")  # the post-incident review
    reviewed_by: str = Field(pattern=_PERSON)
    reviewed_at: AwareDatetime


class Grant(_Strict):
    id: str = Field(pattern=r"^BG-[0-9]{4}-[0-9]{3}$")
    person: str = Field(pattern=_PERSON)
    environments: list[Literal[ENVIRONMENTS]] = Field(min_length=1)
    reason: str = Field(min_length=10, max_length=500)
    incident: str = Field(pattern=r"^INC[0-9]{7}$")
    approval: Approval
    start: AwareDatetime
    end: AwareDatetime
    review: Review | None = None


def load_grants(path: Path = REGISTER) -> list[Grant]:
    return load_entries(path, "grants", Grant, "break-glass grant")


def refusal(grant: Grant, person: str, environment: str, now: datetime, grants: list[Grant]) -> str | None:
    """Why `grant` does not let `person` run in `environment` now, or None if it does."""
    if grant.person != person:
        return f"it is {grant.person}'s, not {person}'s"
    if environment not in grant.environments:
        return f"it is for {', '.join(grant.environments)}, not {environment}"
    if grant.approval.name == grant.person:
        return f"it is approved by {grant.person}, who holds it; a VP other than the holder must approve"
    if grant.approval.approved_at > now:
        return f"its approval is dated {grant.approval.approved_at:%Y-%m-%d %H:%M}Z, after now"
    if not timedelta(0) < grant.end - grant.start <= MAX_WINDOW:
        return f"its window {grant.start:%Y-%m-%d %H:%M} .. {grant.end:%H:%M} is not a positive span of at most 2 hours"
    if now < grant.start:
        return f"it starts at {grant.start:%Y-%m-%d %H:%M}Z, after now"
    if now > grant.end:
        return f"it ended at {grant.end:%Y-%m-%d %H:%M}Z"
    unreviewed = [g.id for g in grants if g.person == person and g.start < grant.start and g.review is None]
    if unreviewed:
        return f"{person}'s earlier grant {', '.join(unreviewed)} has no post-incident review yet"
    return None


def grant_refusal(grant_id: str, tags: dict[str, str], environment: str, now: datetime,
                  register: Path = REGISTER) -> tuple[Grant | None, str | None]:
    """The grant a run's tags name and why it does not allow the run (None if it does)."""
    person = (tags.get(REQUESTED_BY_TAG) or "").strip()
    if (user := (tags.get("dagster/user") or "").strip()) and user != person:
        return None, f"its dagster/user {user!r} is not its {REQUESTED_BY_TAG} {person!r}"
    grants = load_grants(register)
    grant = next((g for g in grants if g.id == grant_id), None)
    if grant is None:
        return None, f"break-glass grant {grant_id!r} is not in {register.name}"
    reason = refusal(grant, person, environment, now, grants)
    return grant, (f"break-glass grant {grant.id} refused: {reason}" if reason else None)
