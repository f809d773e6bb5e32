"""Each of the environment's buckets in the posture `deployments/s3/` and the env file state for it: SSE-KMS default
encryption with `storage.kms_key_alias`, public access blocked, a policy denying non-TLS access, any principal but
`storage.access_roles` and writes asking for another encryption, versioning, the lifecycle rules of its role
(`lifecycle-<env>.json` for a perishable bucket, none on any other); and on the audit bucket the deny-delete policy of
`audit-bucket-policy.json` and Object Lock in compliance mode for at least `storage.audit_lock_days`.

`bucket-posture.json` is one template for every bucket; the env file fills in its names. The bucket_lifecycle job
reads each bucket's settings, puts back whatever drifted that it may set, reads them back, and refuses (naming bucket
and setting) what it must not set by itself: Object Lock cannot be turned off, and turning it on, or shortening a
compliance retention, is nobody's to do unattended."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from aiml_assets.governance.lifecycle import applied_rules, lifecycle_document, rules_drift
from aiml_assets.resources.audit import AUDIT_ROLE
from aiml_assets.resources.storage import S3Storage, Storage
from aiml_assets.settings import DEPLOYMENTS_DIR, Settings

POSTURE_FILE = DEPLOYMENTS_DIR / "s3" / "bucket-posture.json"
AUDIT_POLICY_FILE = DEPLOYMENTS_DIR / "s3" / "audit-bucket-policy.json"
AUDIT_LOCK_FILE = DEPLOYMENTS_DIR / "s3" / "audit-object-lock.json"
POSTURE_DRIFT = "bucket_posture_drift"  # audit action
_PLACEHOLDER = re.compile(r"AUDIT_BUCKET|BUCKET|KMS_KEY_ALIAS|ACCESS_ROLES")


class PostureMismatch(RuntimeError):
    """`deployments/s3/` and the env file disagree."""


@dataclass(frozen=True)
class Posture:
    """What one bucket's settings must be."""

    bucket: str
    roles: tuple[str, ...]
    encryption: dict
    public_access_block: dict
    versioning: dict
    policy: dict
    lifecycle_rules: list[dict]  # none: no rule may expire anything in this bucket
    lock_days: int | None  # the audit bucket: its Object Lock's least compliance retention


@dataclass
class PostureReport:
    bucket: str
    drift: list[str] = field(default_factory=list)  # what was found changed (or never set), before applying
    refused: list[str] = field(default_factory=list)  # what the job must not put right by itself


@dataclass(frozen=True)
class _Setting:
    name: str
    found: Callable  # (s3, bucket) -> the setting as read, comparable with `expected`
    expected: Callable  # (posture) -> what it must be
    apply: Callable  # (s3, posture) -> None
    drift: Callable | None = None  # (found, expected) -> how they differ, or None; default: by equality

    def differs(self, found, expected) -> str | None:
        if self.drift:
            return self.drift(found, expected)
        return None if found == expected else f"{self.name} {'is missing' if found is None else 'differs'}"


def _read(call: Callable, missing: str):
    try:
        return call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] != missing:
            raise
        return None


def _put_lifecycle(s3, posture: Posture) -> None:
    if posture.lifecycle_rules:
        s3.put_bucket_lifecycle_configuration(Bucket=posture.bucket,
                                              LifecycleConfiguration={"Rules": posture.lifecycle_rules})
    else:
        s3.delete_bucket_lifecycle(Bucket=posture.bucket)


SETTINGS = (
    _Setting("encryption",
             lambda s3, b: _read(lambda: s3.get_bucket_encryption(Bucket=b)["ServerSideEncryptionConfiguration"],
                                 "ServerSideEncryptionConfigurationNotFoundError"),
             lambda p: p.encryption,
             lambda s3, p: s3.put_bucket_encryption(Bucket=p.bucket, ServerSideEncryptionConfiguration=p.encryption)),
    _Setting("public access block",
             lambda s3, b: _read(lambda: s3.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"],
                                 "NoSuchPublicAccessBlockConfiguration"),
             lambda p: p.public_access_block,
             lambda s3, p: s3.put_public_access_block(Bucket=p.bucket,
                                                      PublicAccessBlockConfiguration=p.public_access_block)),
    _Setting("policy",
             lambda s3, b: _read(lambda: json.loads(s3.get_bucket_policy(Bucket=b)["Policy"]), "NoSuchBucketPolicy"),
             lambda p: p.policy,
             lambda s3, p: s3.put_bucket_policy(Bucket=p.bucket, Policy=json.dumps(p.policy))),
    _Setting("versioning", lambda s3, b: {"Status": s3.get_bucket_versioning(Bucket=b).get("Status")},
             lambda p: p.versioning,
             lambda s3, p: s3.put_bucket_versioning(Bucket=p.bucket, VersioningConfiguration=p.versioning),
             lambda found, expected: None if found == expected else f"versioning is not {expected['Status'].lower()}"),
    _Setting("lifecycle", applied_rules, lambda p: p.lifecycle_rules, _put_lifecycle, rules_drift),
)


def _render(node, values: dict):
    """The template with the env's values: a string that is exactly a placeholder takes its value whole (a list of
    roles), one that holds a placeholder (an ARN) has it replaced."""
    if isinstance(node, dict):
        return {key: _render(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_render(value, values) for value in node]
    if isinstance(node, str):
        return values[node] if node in values else _PLACEHOLDER.sub(lambda m: values[m.group()], node)
    return node


def object_lock_days(settings: Settings) -> int:
    """The audit bucket's Object Lock retention, as `audit-object-lock.json` and the env file both state it."""
    retention = json.loads(AUDIT_LOCK_FILE.read_text())["Rule"]["DefaultRetention"]
    if retention != {"Mode": "COMPLIANCE", "Days": settings.storage.audit_lock_days}:
        raise PostureMismatch(f"audit-object-lock.json keeps {retention}; expected COMPLIANCE for "
                              f"storage.audit_lock_days ({settings.storage.audit_lock_days}) days")
    return settings.storage.audit_lock_days


def postures(storage: S3Storage, settings: Settings) -> list[Posture]:
    """One posture per bucket of the environment (roles sharing a bucket share its posture)."""
    template = json.loads(POSTURE_FILE.read_text())
    roles_of: dict[str, list[str]] = {}
    for role in settings.storage.buckets:
        roles_of.setdefault(storage.root(role).removeprefix("s3://").split("/")[0], []).append(role)
    found = []
    for bucket, roles in roles_of.items():
        values = {"BUCKET": bucket, "AUDIT_BUCKET": bucket, "KMS_KEY_ALIAS": settings.storage.kms_key_alias,
                  "ACCESS_ROLES": list(settings.storage.access_roles)}
        posture = _render(template, values)
        audit = AUDIT_ROLE in roles
        if audit:
            posture["Policy"]["Statement"] += _render(json.loads(AUDIT_POLICY_FILE.read_text()), values)["Statement"]
        perishable = set(roles) & set(settings.storage.perishable)
        found.append(Posture(
            bucket=bucket, roles=tuple(roles), encryption=posture["ServerSideEncryptionConfiguration"],
            public_access_block=posture["PublicAccessBlockConfiguration"],
            versioning=posture["VersioningConfiguration"], policy=posture["Policy"],
            lifecycle_rules=lifecycle_document(settings)["Rules"] if perishable else [],
            lock_days=object_lock_days(settings) if audit else None,
        ))
    return found


def lock_refusals(s3, posture: Posture) -> list[str]:
    """What is wrong with the audit bucket's Object Lock: the job never changes it."""
    lock = _read(lambda: s3.get_object_lock_configuration(Bucket=posture.bucket)["ObjectLockConfiguration"],
                 "ObjectLockConfigurationNotFoundError") or {}
    if lock.get("ObjectLockEnabled") != "Enabled":
        return ["Object Lock is off"]
    retention = lock.get("Rule", {}).get("DefaultRetention", {})
    if retention.get("Mode") != "COMPLIANCE":
        return [f"Object Lock is not in COMPLIANCE mode (found {retention.get('Mode') or 'no default retention'})"]
    days = retention.get("Days") or 365 * (retention.get("Years") or 0)
    if days < posture.lock_days:
        return [f"Object Lock keeps {days} days, shorter than storage.audit_lock_days ({posture.lock_days})"]
    return []


def drift(s3, posture: Posture) -> list[str]:
    """How the bucket's settings differ from its posture, read only (Object Lock aside: `lock_refusals`)."""
    return [found for setting in SETTINGS
            if (found := setting.differs(setting.found(s3, posture.bucket), setting.expected(posture)))]


def apply_posture(storage: Storage, settings: Settings, log=print) -> list[PostureReport]:
    """Read each bucket's posture (what drifted), put back what may be, read it back; returns each bucket's report,
    whose `refused` lists what the caller must fail on."""
    if not isinstance(storage, S3Storage):
        log("local folders have no bucket posture: the retention purge alone enforces retention")
        return []
    s3, reports = storage.client(), []
    for posture in postures(storage, settings):
        report = PostureReport(posture.bucket)
        for setting in SETTINGS:
            if drifted := setting.differs(setting.found(s3, posture.bucket), setting.expected(posture)):
                report.drift.append(drifted)
                try:
                    setting.apply(s3, posture)
                except ClientError as exc:  # the audit bucket's own policy denies changing its policy, for one
                    report.refused.append(f"{drifted}: cannot put back {setting.name} ({exc.response['Error']['Code']})")
                    continue
                if still := setting.differs(setting.found(s3, posture.bucket), setting.expected(posture)):
                    report.refused.append(f"{still} after applying")
        if posture.lock_days is not None and (lock := lock_refusals(s3, posture)):
            report.drift += lock
            report.refused += lock
        log(f"{posture.bucket} ({', '.join(posture.roles)}): found {'; '.join(report.drift) or 'as deployed'}"
            + (f"; refused: {'; '.join(report.refused)}" if report.refused else ""))
        reports.append(report)
    return reports


def rendered(settings: Settings, bucket: str) -> dict:
    """One bucket's posture as the S3 APIs take it (for applying by hand, deployments/s3/README.md)."""
    [posture] = [p for p in postures(S3Storage(buckets=settings.storage.buckets), settings) if p.bucket == bucket]
    return {"ServerSideEncryptionConfiguration": posture.encryption,
            "PublicAccessBlockConfiguration": posture.public_access_block,
            "VersioningConfiguration": posture.versioning, "Policy": posture.policy,
            "LifecycleConfiguration": {"Rules": posture.lifecycle_rules}}


if __name__ == "__main__":
    import sys

    from aiml_assets.settings import load_settings

    print(json.dumps(rendered(load_settings(sys.argv[1]), sys.argv[2]), indent=2))
