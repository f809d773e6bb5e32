"""Prod inference: scoring features, deployed models, daily propensity scores, drift, the UAT parallel run."""
