"""Where running code came from: the git commit and the package version, for MLflow tags and Nexus metadata."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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


RELEASE_FILE = PROJECT_ROOT / "RELEASE.json"  # written by the deploy job into the shipped code location


def shipped_release(path: Path = RELEASE_FILE) -> str | None:
    """The release tag (vX.Y.Z) this code location was shipped as, or None if CI did not ship it."""
    try:
        tag = json.loads(path.read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) and tag else None
