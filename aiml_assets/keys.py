"""The names the graph is wired by: asset keys, group names, the step launcher's resource key, the pattern of a
change request id. A leaf module (it imports nothing of the project), so every layer can name any asset."""

from __future__ import annotations

import re

from dagster import AssetKey, ResourceParam, StepLauncher

# A step that takes this resource runs through the environment's step launcher: on Databricks in lab, UAT and prod,
# in-process locally (where the resource is None).
STEP_LAUNCHER_KEY = "pyspark_step_launcher"
StepLauncherParam = ResourceParam[StepLauncher | None]

# groups, one per platform component (the env file's `asset_groups` name the ones an environment runs)
EDP_GROUP = "edp_sources"
FEATURES_GROUP = "lab_features"
MODEL_GROUP = "model_versions"
INFERENCE_GROUP = "prod_inference"
PARALLEL_RUN_GROUP = "uat_parallel_run"
GOVERNANCE_GROUP = "governance"

FEATURES_KEY = AssetKey(["lab", "customer_features"])
TRAINING_KEY = AssetKey(["lab", "training_set"])
MODEL_KEY = AssetKey(["models", "propensity_model"])
BINARY_KEY = AssetKey(["models", "model_binary"])
SCORING_FEATURES_KEY = AssetKey(["prod", "scoring_features"])
DEPLOYED_MODEL_KEY = AssetKey(["prod", "deployed_model"])
SCORES_KEY = AssetKey(["prod", "propensity_scores"])
PARALLEL_RUN_KEY = AssetKey(["uat", "parallel_run_report"])
CDP_KEY = AssetKey(["cdp", "nba_propensity"])
PURGE_KEY = AssetKey(["governance", "retention_purge"])
AUDIT_HEAD_KEY = AssetKey(["governance", "audit_log"])  # one partition per audit log location

CHANGE_REQUEST = re.compile(r"^CHG[0-9]{7}$")  # a ServiceNow change request id
