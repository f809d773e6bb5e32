#!/bin/sh
# Schedules, sensors, the run queue, backfills and run monitoring of a remote environment (the same in lab, uat
# and prod; which environment is the code server's AIML_ENV).
set -eu
exec dagster-daemon run -w "$(dirname "$0")/workspace.yaml"
