#!/bin/sh
# The environment's code server: serves the release that $AIML_CODE_LOCATION_DIR/current points at (the deploy job
# switches it) with AIML_ENV picking resources/<env>.yaml. The webserver and daemon reach it over gRPC; keep its
# port reachable only by them and the deploy runner (gRPC has no authentication).
# No --fixed-server-id: a reload must change the server id, or the webserver and daemon keep the old definitions.
set -eu
case "${AIML_ENV:-}" in
  lab | uat | prod) export AIML_ENV ;;
  *) echo "code-server.sh: AIML_ENV must be lab, uat or prod, not '${AIML_ENV:-}'" >&2; exit 2 ;;
esac
exec dagster code-server start -m aiml_assets.definitions -d "${AIML_CODE_LOCATION_DIR:?}/current" \
  --location-name aiml_assets -h "${AIML_BIND_HOST:-0.0.0.0}" -p "${DAGSTER_CODE_SERVER_PORT:-4000}"
