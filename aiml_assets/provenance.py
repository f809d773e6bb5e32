"""Where running code came from: the git commit and the package version, for MLflow tags and Nexus metadata."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version

from aiml_assets.settings import PROJECT_ROOT

COMMIT_ENV_VAR = "AIML_GIT_COMMIT"  # set for remote steps by the step launcher: a cluster has no .git


def git_commit() -> str:
    if os.environ.get(COMMIT_ENV_VAR):
        return os.environ[COMMIT_ENV_VAR]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    try:
        return version("aiml_assets")
    except PackageNotFoundError:
        return "unknown"
