"""Governance controls: the HLD's lockdown, retention, erasure, raw access and audit trail. The highest layer but the
entry points (only `definitions`, `cli` and `local_run` import it); the audit log and the egress policy they use are
resources (`resources.audit`, `resources.egress`), promotion lives with the models (`models.promotion`)."""
