"""The perishable buckets' lifecycle rules, from `deployments/s3/lifecycle-<env>.json`: objects expire
`BACKSTOP_DAYS` after the environment's retention. The retention purge acts first and through Delta; S3 expiring a
Delta log entry a live table still needs would break the table, so S3's rule is the backstop for a purge that did
not run. The bucket posture (`bucket_posture.py`) applies these rules, with versioning, and reads them back."""

from __future__ import annotations

import json

from aiml_assets.settings import DEPLOYMENTS_DIR, Settings


BACKSTOP_DAYS = 2  # S3 counts from the next midnight UTC; the purge runs daily at 02:00 UK


class LifecycleMismatch(RuntimeError):
    """A bucket's versioning or lifecycle rules are not what `deployments/s3/` says."""


def lifecycle_document(settings: Settings) -> dict:
    document = json.loads((DEPLOYMENTS_DIR / "s3" / f"lifecycle-{settings.environment}.json").read_text())
    days = {rule["Expiration"]["Days"] for rule in document["Rules"] if "Days" in rule.get("Expiration", {})}
    if days != {settings.storage.retention_days + BACKSTOP_DAYS}:
        raise LifecycleMismatch(f"lifecycle-{settings.environment}.json expires after {sorted(days)} days; expected "
                                f"storage.retention_days ({settings.storage.retention_days}) + {BACKSTOP_DAYS}")
    return document


def applied_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
            raise
        return []


def rules_drift(applied: list[dict], expected: list[dict]) -> str | None:
    """Which rules (by ID) differ between `applied` and `expected`, or None."""
    applied_by_id, expected_by_id = _by_id(applied), _by_id(expected)
    differing = sorted(rule for rule in set(applied_by_id) | set(expected_by_id)
                       if applied_by_id.get(rule) != expected_by_id.get(rule))
    return f"lifecycle rules {differing} differ from deployments/s3" if differing else None


def _by_id(rules: list[dict]) -> dict[str, str]:
    return {rule["ID"]: json.dumps(rule, sort_keys=True) for rule in rules}
