"""Resolve an environment's cluster policy id and pin it into the cluster spec shipped with the code location.

Databricks assigns policy ids; the repository can only name the policy. `deployments/databricks/<env>_cluster.json`
therefore carries `"policy_id": "aiml-<env>-jobs"`, the NAME of the policy whose definition is
`deployments/databricks/policies/<env>_policy.json`. Before shipping, the deploy job runs

    python deployments/gitlab/pin_cluster_policy.py <env>

which finds the workspace policy of that name (the CI service principal needs only to read policies), refuses to
continue if its definition differs from the reviewed file (policies are applied by a workspace admin, e.g.
`databricks cluster-policies edit`, never by this pipeline), and writes the real id into the cluster spec of the
working tree that is packaged. The Databricks SDK reads DATABRICKS_HOST / DATABRICKS_CLIENT_ID /
DATABRICKS_CLIENT_SECRET from the environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

DATABRICKS_DIR = Path(__file__).resolve().parent.parent / "databricks"


class PolicyError(Exception):
    pass


def policy_name(env: str) -> str:
    return f"aiml-{env}-jobs"


def resolve_policy_id(env: str, policies: Iterable[tuple[str, str, str]]) -> str:
    """`policies`: (name, policy_id, definition JSON) of the workspace's policies."""
    expected = json.loads((DATABRICKS_DIR / "policies" / f"{env}_policy.json").read_text())
    matches = [(pid, definition) for name, pid, definition in policies if name == policy_name(env)]
    if len(matches) != 1:
        raise PolicyError(f"expected exactly one cluster policy named {policy_name(env)!r}, found {len(matches)}")
    policy_id, definition = matches[0]
    if json.loads(definition or "{}") != expected:
        raise PolicyError(f"policy {policy_name(env)!r} ({policy_id}) differs from policies/{env}_policy.json")
    return policy_id


def pin(env: str, policy_id: str) -> Path:
    path = DATABRICKS_DIR / f"{env}_cluster.json"
    spec = json.loads(path.read_text())
    if spec.get("policy_id") != policy_name(env):
        raise PolicyError(f"{path.name}: policy_id is {spec.get('policy_id')!r}, expected {policy_name(env)!r}")
    spec["policy_id"] = policy_id
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("lab", "uat", "prod"):
        print("usage: pin_cluster_policy.py lab|uat|prod", file=sys.stderr)
        return 2
    env = argv[1]
    from databricks.sdk import WorkspaceClient

    workspace = WorkspaceClient()
    try:
        policy_id = resolve_policy_id(
            env, ((p.name, p.policy_id, p.definition) for p in workspace.cluster_policies.list())
        )
        path = pin(env, policy_id)
    except PolicyError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 1
    print(f"{path.name}: policy_id pinned to {policy_id} ({policy_name(env)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
