"""The perishable buckets' S3 settings, from `deployments/s3/`: versioning on, and the lifecycle rules that expire
objects after the environment's retention. Applied and read back; any difference is a failure."""

from __future__ import annotations

import json

from aiml_assets.resources.storage import S3Storage, Storage
from aiml_assets.settings import DEPLOYMENTS_DIR, Settings


class LifecycleMismatch(RuntimeError):
    """A bucket's versioning or lifecycle rules are not what `deployments/s3/` says."""


def lifecycle_document(settings: Settings) -> dict:
    document = json.loads((DEPLOYMENTS_DIR / "s3" / f"lifecycle-{settings.environment}.json").read_text())
    days = {rule["Expiration"]["Days"] for rule in document["Rules"] if "Days" in rule.get("Expiration", {})}
    if days != {settings.storage.retention_days}:
        raise LifecycleMismatch(f"lifecycle-{settings.environment}.json expires after {sorted(days)} days, "
                                f"storage.retention_days is {settings.storage.retention_days}")
    return document


def apply_lifecycle(storage: Storage, settings: Settings, log=print) -> dict[str, str]:
    """Apply, then verify, each perishable bucket's versioning and lifecycle rules; returns bucket -> outcome."""
    if not isinstance(storage, S3Storage):
        log("local folders have no lifecycle rules: the retention purge alone enforces retention")
        return {}
    document, s3 = lifecycle_document(settings), storage.client()
    outcome = {}
    for role in settings.storage.perishable:
        bucket = storage.root(role).removeprefix("s3://").split("/")[0]
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=document)
        verify_lifecycle(s3, bucket, document)
        outcome[bucket] = f"versioned; {len(document['Rules'])} lifecycle rules as in lifecycle-{settings.environment}.json"
        log(f"{bucket}: {outcome[bucket]}")
    return outcome


def verify_lifecycle(s3, bucket: str, document: dict) -> None:
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        raise LifecycleMismatch(f"{bucket}: versioning is not enabled")
    applied = _by_id(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])
    expected = _by_id(document["Rules"])
    if applied != expected:
        differing = sorted(rule for rule in set(applied) | set(expected) if applied.get(rule) != expected.get(rule))
        raise LifecycleMismatch(f"{bucket}: lifecycle rules {differing} differ from deployments/s3")


def _by_id(rules: list[dict]) -> dict[str, str]:
    return {rule["ID"]: json.dumps(rule, sort_keys=True) for rule in rules}
