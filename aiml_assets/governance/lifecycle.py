"""The perishable buckets' S3 settings, from `deployments/s3/`: versioning on, and lifecycle rules that expire
objects `BACKSTOP_DAYS` after the environment's retention. The retention purge acts first and through Delta; S3
expiring a Delta log entry a live table still needs would break the table, so S3's rule is the backstop for a purge
that did not run. The bucket's settings are read first (drift is reported and audited), then applied and read back;
any difference after applying is a failure."""

from __future__ import annotations

import json

from aiml_assets.resources.storage import S3Storage, Storage
from aiml_assets.settings import DEPLOYMENTS_DIR, Settings


BACKSTOP_DAYS = 2  # S3 counts from the next midnight UTC; the purge runs daily at 02:00 UK
LIFECYCLE_DRIFT = "lifecycle_drift"  # audit action


class LifecycleMismatch(RuntimeError):
    """A bucket's versioning or lifecycle rules are not what `deployments/s3/` says."""


def lifecycle_document(settings: Settings) -> dict:
    document = json.loads((DEPLOYMENTS_DIR / "s3" / f"lifecycle-{settings.environment}.json").read_text())
    days = {rule["Expiration"]["Days"] for rule in document["Rules"] if "Days" in rule.get("Expiration", {})}
    if days != {settings.storage.retention_days + BACKSTOP_DAYS}:
        raise LifecycleMismatch(f"lifecycle-{settings.environment}.json expires after {sorted(days)} days; expected "
                                f"storage.retention_days ({settings.storage.retention_days}) + {BACKSTOP_DAYS}")
    return document


def apply_lifecycle(storage: Storage, settings: Settings, log=print) -> dict[str, str]:
    """Report drift from, apply, then verify each perishable bucket's versioning and lifecycle rules; returns
    bucket -> what was found before applying."""
    if not isinstance(storage, S3Storage):
        log("local folders have no lifecycle rules: the retention purge alone enforces retention")
        return {}
    document, s3 = lifecycle_document(settings), storage.client()
    outcome = {}
    for role in settings.storage.perishable:
        bucket = storage.root(role).removeprefix("s3://").split("/")[0]
        outcome[bucket] = drift(s3, bucket, document) or "as deployed"
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=document)
        verify_lifecycle(s3, bucket, document)
        log(f"{bucket}: found {outcome[bucket]}; now versioned with the rules of lifecycle-{settings.environment}.json")
    return outcome


def verify_lifecycle(s3, bucket: str, document: dict) -> None:
    if found := drift(s3, bucket, document):
        raise LifecycleMismatch(f"{bucket}: {found}")


def drift(s3, bucket: str, document: dict) -> str | None:
    """How the bucket's versioning and lifecycle rules differ from `document`, or None."""
    found = [] if s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled" else ["versioning is not enabled"]
    try:
        applied = _by_id(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])
    except s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
            raise
        applied = {}
    expected = _by_id(document["Rules"])
    differing = sorted(rule for rule in set(applied) | set(expected) if applied.get(rule) != expected.get(rule))
    found += [f"lifecycle rules {differing} differ from deployments/s3"] if differing else []
    return "; ".join(found) or None


def _by_id(rules: list[dict]) -> dict[str, str]:
    return {rule["ID"]: json.dumps(rule, sort_keys=True) for rule in rules}
