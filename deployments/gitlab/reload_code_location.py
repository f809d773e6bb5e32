"""Tell the environment's code server to load the release `current` now points at.

The code server (`dagster code-server start`, deployments/dagster/remote/code-server.sh) answers ReloadCode by
starting a new definitions process and shutting the old one down once its runs finish. The new process has a new
server id; the webserver and daemon poll that id and fetch the new definitions, so this works with a read-only
webserver (which refuses `reloadRepositoryLocation`). Environment: DAGSTER_CODE_SERVER_HOST,
DAGSTER_CODE_SERVER_PORT (default 4000).
"""

from __future__ import annotations

import os
import sys

LOCATION = "aiml_assets"
RELOAD_TIMEOUT_SECONDS = 600  # the call returns once the new process has imported the code location


def main(client=None) -> int:
    from dagster._serdes import deserialize_value
    from dagster._utils.error import SerializableErrorInfo

    if client is None:
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(
            host=os.environ["DAGSTER_CODE_SERVER_HOST"], port=int(os.environ.get("DAGSTER_CODE_SERVER_PORT", "4000"))
        )
    before = client.get_server_id()
    client.reload_code(timeout=RELOAD_TIMEOUT_SECONDS)
    loaded = deserialize_value(client.list_repositories())
    if isinstance(loaded, SerializableErrorInfo):
        print(f"reload of {LOCATION} failed: {loaded.cls_name}: {loaded.message}", file=sys.stderr)
        return 1
    if client.get_server_id() == before:
        # e.g. a code server started with --fixed-server-id: the webserver and daemon would not notice the reload
        print(f"reload of {LOCATION} failed: the code server's id did not change", file=sys.stderr)
        return 1
    print(f"{LOCATION} reloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
