#!/bin/sh
# The Dagster UI of a remote environment. Lab's is writable (data scientists launch lab runs from it); uat's and
# prod's are --read-only: no launch, re-execute, backfill, schedule toggle or code-location reload from the UI.
set -eu
case "${AIML_ENV:-}" in
  lab) set -- ;;
  uat | prod) set -- --read-only ;;
  *) echo "webserver.sh: AIML_ENV must be lab, uat or prod, not '${AIML_ENV:-}'" >&2; exit 2 ;;
esac
exec dagster-webserver -w "$(dirname "$0")/workspace.yaml" \
  -h "${AIML_BIND_HOST:-0.0.0.0}" -p "${DAGSTER_WEBSERVER_PORT:-3000}" "$@"
