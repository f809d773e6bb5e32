"""Ask the environment's Dagster webserver to reload the aiml_assets code location (after a new release is in place).

The code server (`dagster code-server start`) restarts its definitions process on reload, so the new release is
served without restarting containers. Environment: DAGSTER_WEBSERVER_HOST, DAGSTER_WEBSERVER_PORT (default 3000),
DAGSTER_WEBSERVER_HTTPS ("true"/"false", default "true").
"""

from __future__ import annotations

import os
import sys

LOCATION = "aiml_assets"


def main(client=None) -> int:
    if client is None:
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient(
            os.environ["DAGSTER_WEBSERVER_HOST"],
            port_number=int(os.environ.get("DAGSTER_WEBSERVER_PORT", "3000")),
            use_https=os.environ.get("DAGSTER_WEBSERVER_HTTPS", "true").lower() == "true",
        )
    info = client.reload_repository_location(LOCATION)
    if info.status.value != "SUCCESS":
        print(f"reload of {LOCATION} failed: {info.failure_type}: {info.message}", file=sys.stderr)
        return 1
    print(f"{LOCATION} reloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
