"""The change-management system (ServiceNow's Table API): is a change request approved, open for implementation now,
and does it list the release being shipped or launched? Fails closed: an unreachable system, a malformed record or
any rule unmet refuses, naming the change and the rule.

CI asks it before a prod deploy (`aiml check-change-request`) and before it signs a launch in UAT or prod
(`aiml launch`); the code servers never call it (they verify CI's signature, governance/launch_signature.py).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime

from dagster import ConfigurableResource
from pydantic import Field

from aiml_assets.keys import CHANGE_REQUEST

IMPLEMENT_STATE = "-1"  # ServiceNow's default change model: -1 = Implement
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # Table API values (sysparm_display_value=false) are UTC in this format
RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # a tag vX.Y.Z (prod) or branch-commit (UAT)


class ChangeRequestRefused(PermissionError):
    """No approved change request covers this; nothing was shipped or launched."""


def check_record(cr_id: str, record: Mapping[str, str] | None, release: str, now: datetime,
                 release_field: str) -> None:
    """Refuse unless `record` is `cr_id`, approved, in Implement, planned around `now`, and lists `release`."""
    if not record or record.get("number") != cr_id:
        raise ChangeRequestRefused(f"{cr_id}: no such change request")
    if record.get("approval") != "approved":
        raise ChangeRequestRefused(f"{cr_id}: approval is {record.get('approval')!r}, expected 'approved'")
    if str(record.get("state")) != IMPLEMENT_STATE:
        raise ChangeRequestRefused(f"{cr_id}: state is {record.get('state')!r}, expected Implement "
                                   f"({IMPLEMENT_STATE})")
    try:
        start, end = (datetime.strptime(record[key], TIME_FORMAT).replace(tzinfo=UTC)
                      for key in ("start_date", "end_date"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ChangeRequestRefused(f"{cr_id}: no planned implementation window ({exc})") from exc
    if not start <= now <= end:
        raise ChangeRequestRefused(f"{cr_id}: now ({now:%Y-%m-%d %H:%M}Z) is outside its planned window "
                                   f"{start:%Y-%m-%d %H:%M}Z .. {end:%Y-%m-%d %H:%M}Z")
    listed = re.split(r"[\s,;]+", str(record.get(release_field) or "").strip())
    if release not in listed:
        raise ChangeRequestRefused(f"{cr_id}: release {release} is not listed in its {release_field} "
                                   f"({record.get(release_field)!r})")


class ChangeManagement(ConfigurableResource):
    """ServiceNow's change_request table, read with a read-only integration account."""

    instance_url: str  # https://<instance>.service-now.com (plain http only on the loopback, for tests)
    username: str
    password: str
    release_field: str = Field("u_release_tags", pattern=r"^[a-z][a-z0-9_]*$")  # the change model's release list
    timeout_seconds: float = 30

    def approved(self, cr_id: str, release: str, now: datetime | None = None) -> dict:
        """The change request record, once every rule of `check_record` holds for `release` now."""
        if not CHANGE_REQUEST.fullmatch(cr_id or ""):
            raise ChangeRequestRefused(f"change request {cr_id!r} does not match {CHANGE_REQUEST.pattern}")
        if not RELEASE.fullmatch(release or ""):
            raise ChangeRequestRefused(f"{cr_id}: release {release!r} is not a release name (RELEASE.json's version)")
        try:
            record = self._fetch(cr_id)
        except ChangeRequestRefused:
            raise
        except Exception as exc:  # network, auth, JSON: fail closed
            raise ChangeRequestRefused(f"{cr_id}: could not read the change request: {exc}") from exc
        check_record(cr_id, record, release, now or datetime.now(UTC), self.release_field)
        return record

    def _fetch(self, cr_id: str) -> dict | None:
        url = urllib.parse.urlsplit(self.instance_url)
        if not (url.scheme == "https" or (url.scheme == "http" and _loopback(url.hostname))):
            raise ChangeRequestRefused(f"{self.instance_url!r}: the change system is reached over https only")
        if not self.username or not self.password:
            raise ChangeRequestRefused("the change system's username and password are required")
        query = urllib.parse.urlencode({
            "sysparm_query": f"number={cr_id}",
            "sysparm_fields": f"number,approval,state,start_date,end_date,{self.release_field}",
            "sysparm_display_value": "false",
            "sysparm_limit": "1",
        })
        request = urllib.request.Request(f"{self.instance_url.rstrip('/')}/api/now/table/change_request?{query}")
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Accept", "application/json")
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 (checked)
            result = json.load(response).get("result") or []
        return result[0] if result else None


def _loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def from_environment(env: Mapping[str, str]) -> ChangeManagement:
    """The CI job's change system: SERVICENOW_INSTANCE_URL, _USERNAME, _PASSWORD (protected, masked CI variables)."""
    return ChangeManagement(instance_url=env.get("SERVICENOW_INSTANCE_URL", ""),
                            username=env.get("SERVICENOW_USERNAME", ""), password=env.get("SERVICENOW_PASSWORD", ""))
