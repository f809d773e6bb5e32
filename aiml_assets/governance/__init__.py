"""Governance controls: the append-only audit log (`audit`); promotion lives with the models (`models.promotion`)."""
