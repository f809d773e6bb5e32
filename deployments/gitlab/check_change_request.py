"""Gate of the prod deploy job: CHANGE_REQUEST_ID must name an approved change request open for implementation.

Fails closed: a missing or malformed id, an unreachable change system, a change that is not approved, not in its
Implement state or outside its planned window all exit non-zero, and the job stops before anything is shipped.
Standard library only, so it runs before the project is installed.

Environment (protected, masked CI variables scoped to the `production` environment):
  CHANGE_REQUEST_ID         entered by RTB when running the manual job, e.g. CHG0123456
  SERVICENOW_INSTANCE_URL   base URL of the change management instance (ServiceNow Table API)
  SERVICENOW_USERNAME, SERVICENOW_PASSWORD   read-only integration account
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

CR_PATTERN = re.compile(r"^CHG[0-9]{7}$")
APPROVED = "approved"
IMPLEMENT_STATE = "-1"  # ServiceNow's default change model: -1 = Implement
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # Table API values (sysparm_display_value=false) are UTC in this format


class ChangeRequestError(Exception):
    pass


def validate_id(value: str | None) -> str:
    if not value:
        raise ChangeRequestError("CHANGE_REQUEST_ID is not set: prod deploys need an approved change request id")
    if not CR_PATTERN.fullmatch(value):
        raise ChangeRequestError(f"CHANGE_REQUEST_ID={value!r} does not match {CR_PATTERN.pattern}")
    return value


def check_record(cr_id: str, record: Mapping[str, str] | None, now: datetime) -> None:
    if not record or record.get("number") != cr_id:
        raise ChangeRequestError(f"{cr_id}: no such change request")
    if record.get("approval") != APPROVED:
        raise ChangeRequestError(f"{cr_id}: approval is {record.get('approval')!r}, expected {APPROVED!r}")
    if str(record.get("state")) != IMPLEMENT_STATE:
        raise ChangeRequestError(f"{cr_id}: state is {record.get('state')!r}, expected Implement ({IMPLEMENT_STATE})")
    try:
        start = datetime.strptime(record["start_date"], TIME_FORMAT).replace(tzinfo=UTC)
        end = datetime.strptime(record["end_date"], TIME_FORMAT).replace(tzinfo=UTC)
    except (KeyError, ValueError) as exc:
        raise ChangeRequestError(f"{cr_id}: no planned implementation window ({exc})") from exc
    if not start <= now <= end:
        raise ChangeRequestError(f"{cr_id}: now ({now:%Y-%m-%d %H:%M}Z) is outside its window {start} .. {end}")


def fetch_record(cr_id: str, env: Mapping[str, str]) -> dict | None:
    base_url = env.get("SERVICENOW_INSTANCE_URL", "").rstrip("/")
    user, password = env.get("SERVICENOW_USERNAME", ""), env.get("SERVICENOW_PASSWORD", "")
    if not base_url.startswith("https://") or not user or not password:
        raise ChangeRequestError("SERVICENOW_INSTANCE_URL (https), SERVICENOW_USERNAME and SERVICENOW_PASSWORD are required")
    query = urllib.parse.urlencode(
        {
            "sysparm_query": f"number={cr_id}",
            "sysparm_fields": "number,approval,state,start_date,end_date",
            "sysparm_display_value": "false",
            "sysparm_limit": "1",
        }
    )
    request = urllib.request.Request(f"{base_url}/api/now/table/change_request?{query}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Accept", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (https enforced above)
        result = json.load(response).get("result") or []
    return result[0] if result else None


def main(
    env: Mapping[str, str] | None = None,
    fetch: Callable[[str, Mapping[str, str]], dict | None] = fetch_record,
    now: datetime | None = None,
) -> int:
    env = os.environ if env is None else env
    try:
        cr_id = validate_id(env.get("CHANGE_REQUEST_ID"))
        try:
            record = fetch(cr_id, env)
        except ChangeRequestError:
            raise
        except Exception as exc:  # network, auth, JSON: fail closed
            raise ChangeRequestError(f"{cr_id}: could not read the change request: {exc}") from exc
        check_record(cr_id, record, now or datetime.now(UTC))
    except ChangeRequestError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 1
    print(f"{cr_id}: approved and in its implementation window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
