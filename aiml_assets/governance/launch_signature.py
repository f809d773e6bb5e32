"""Proof of origin for a launch in UAT or prod: an HMAC over who launched it (CI, or a schedule or sensor of this code
location), what the run is (job, partition, run config), why (CI: the approved change request), which code (CI: the
release) and until when, made with a key only the CI runner and the environment's code server hold. Schedules and
sensors are evaluated in the code server, so they sign their own run requests. Tags are typed by whoever launches and
storage is written by whoever holds its credentials; without the key, neither makes a valid signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

REQUESTED_BY_TAG, CHANGE_REQUEST_TAG = "aiml/requested_by", "aiml/change_request"
ORIGIN_TAG, RELEASE_TAG, EXPIRES_TAG = "aiml/launch_origin", "aiml/release", "aiml/launch_expires"
SIGNATURE_TAG, NONCE_TAG, PARTITION_TAG = "aiml/launch_signature", "aiml/launch_nonce", "dagster/partition"
SIGNED_TAGS = frozenset({REQUESTED_BY_TAG, CHANGE_REQUEST_TAG, ORIGIN_TAG, RELEASE_TAG, EXPIRES_TAG, SIGNATURE_TAG,
                         NONCE_TAG, PARTITION_TAG})
CI_ORIGIN = "ci"
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def config_digest(run_config: dict | None) -> str:
    return hashlib.sha256(json.dumps(run_config or {}, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class SignedLaunch:
    environment: str  # a launch signed for UAT is no launch for prod, whatever the keys
    origin: str  # "ci", "schedule:<name>" or "sensor:<name>"
    job: str
    partition: str  # "" for an unpartitioned job
    run_config_sha256: str
    change_request: str  # CI only
    release: str  # CI only: a schedule's run must survive a release shipped between its tick and its start
    expires: datetime
    nonce: str = ""  # schedules and sensors: fresh per evaluation, so no preview of a tick can sign the real one

    def signature(self, key: bytes) -> str:
        message = json.dumps({"environment": self.environment, "origin": self.origin, "job": self.job,
                              "partition": self.partition, "run_config": self.run_config_sha256,
                              "change_request": self.change_request, "release": self.release,
                              "expires": self.expires.strftime(_TIME), "nonce": self.nonce}, sort_keys=True).encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def tags(self, key: bytes) -> dict[str, str]:
        """The run tags that carry the launch and its signature."""
        return {ORIGIN_TAG: self.origin, EXPIRES_TAG: self.expires.strftime(_TIME), SIGNATURE_TAG: self.signature(key),
                **({CHANGE_REQUEST_TAG: self.change_request} if self.change_request else {}),
                **({RELEASE_TAG: self.release} if self.release else {}),
                **({NONCE_TAG: self.nonce} if self.nonce else {}),
                **({PARTITION_TAG: self.partition} if self.partition else {})}


def signed_launch(environment: str, origin: str, job: str, partition: str, run_config: dict | None, *,
                  valid_for: timedelta, change_request: str = "", release: str = "", nonce: str = "",
                  now: datetime | None = None) -> SignedLaunch:
    expires = ((now or datetime.now(UTC)) + valid_for).astimezone(UTC).replace(microsecond=0)
    return SignedLaunch(environment, origin, job, partition, config_digest(run_config), change_request, release,
                        expires, nonce)


def signature_refusal(*, environment: str, origin: str, job: str, tags: dict[str, str], run_config: dict | None,
                      key: bytes | None, release: str | None, now: datetime, max_term: timedelta) -> str | None:
    """Why `tags` do not prove that `origin` launched this run of `job` with this config (CI: on `release`) before
    it expired, or None if they do. Replays are the caller's: a signature is valid for as long as it lasts."""
    if not key:
        return "this code server holds no launch signing key, so no launch can be verified"
    if origin == CI_ORIGIN and not release:
        return "this code location has no RELEASE.json (it was not shipped by CI), so no CI launch can match it"
    if tags.get(ORIGIN_TAG) != origin:
        return f"its {ORIGIN_TAG} tag is {tags.get(ORIGIN_TAG)!r}, not {origin!r}"
    try:
        expires = datetime.strptime(tags.get(EXPIRES_TAG, ""), _TIME).replace(tzinfo=UTC)
    except ValueError:
        return f"its {EXPIRES_TAG} tag is missing or not {_TIME}"
    launch = SignedLaunch(environment, origin, job, tags.get(PARTITION_TAG, ""), config_digest(run_config),
                          tags.get(CHANGE_REQUEST_TAG, ""), tags.get(RELEASE_TAG, ""), expires, tags.get(NONCE_TAG, ""))
    if not hmac.compare_digest(launch.signature(key), tags.get(SIGNATURE_TAG, "")):
        return (f"its launch signature does not match its environment, origin, job, partition, run config, change "
                f"request, release and expiry: {origin} did not sign this launch for {environment}")
    if origin == CI_ORIGIN and launch.release != release:
        return f"it was signed for release {launch.release}, but this code location runs {release}"
    if expires < now:
        return f"its launch signature expired at {expires:%Y-%m-%d %H:%M:%S}Z"
    if expires - now > max_term:
        return f"its launch signature is valid until {expires:%Y-%m-%d %H:%M}Z, over {max_term} from now"
    return None


def signing_key(env_var: str) -> bytes | None:
    """The launch signing key from the environment (the code server's secret store, CI's masked variable)."""
    return os.environ.get(env_var, "").encode() or None
