"""CI's launches in a locked environment (`aiml launch`, the GitLab launch jobs): check the change request with the
change system, sign the launch with the environment's key, and hand it to Dagster's own `dagster job launch`, which
submits it to the instance's run coordinator. The run's executor checks the signature before any step."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

from aiml_assets.governance.change_management import ChangeRequestRefused, from_environment
from aiml_assets.governance.launch_signature import CI_ORIGIN, REQUESTED_BY_TAG, signed_launch
from aiml_assets.settings import DEPLOYMENTS_DIR, Settings


def signed_tags(settings: Settings, env: Mapping[str, str], *, job: str, partition: str, run_config: dict,
                change_request: str, release: str) -> dict[str, str]:
    """The tags of a CI launch of `job`, once the change system approved `change_request` for `release` now."""
    lockdown = settings.lockdown
    if lockdown is None:
        raise ChangeRequestRefused(f"{settings.environment} is not locked: launch runs there as usual")
    key = env.get(lockdown.signing_key_env, "")
    if not key:
        raise ChangeRequestRefused(f"{lockdown.signing_key_env} is not set: this runner cannot sign launches")
    from_environment(env).approved(change_request, release)
    launch = signed_launch(settings.environment, CI_ORIGIN, job, partition, run_config, change_request=change_request,
                           release=release, valid_for=timedelta(minutes=lockdown.max_signature_minutes))
    return {REQUESTED_BY_TAG: lockdown.ci_principal, **launch.tags(key.encode())}


REMOTE_WORKSPACE = DEPLOYMENTS_DIR / "dagster" / "remote" / "workspace.yaml"  # the environment's code server


def launch(settings: Settings, env: Mapping[str, str], *, job: str, partition: str, run_config: dict,
           change_request: str, release: str, workspace: Path = REMOTE_WORKSPACE,
           run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    try:
        tags = signed_tags(settings, env, job=job, partition=partition, run_config=run_config,
                           change_request=change_request, release=release)
    except ChangeRequestRefused as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 1
    command = [str(Path(sys.executable).parent / "dagster"), "job", "launch", "-w", str(workspace), "-j", job,
               "--tags", json.dumps(tags), "--config-json", json.dumps(run_config)]
    return run(command, check=False).returncode
