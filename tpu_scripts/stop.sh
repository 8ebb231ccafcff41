#!/usr/bin/env bash
# Stop the run that launch.sh started, on every worker: SIGTERM to its restart loop and to pretrax
# (no restart follows), then wait for both to exit. The same launch.sh command later resumes the
# run from the newest complete checkpoint in run.dir.
#
# usage: tpu_scripts/stop.sh --name NAME --zone ZONE [options]
#
#   --name NAME        the TPU VM
#   --zone ZONE        its zone
#   --project PROJECT  default: gcloud's configured project
#   --timeout SEC      wait this long for the exit (default 300), then report failure
#   --num-slices K     a multi-slice queued resource: stop NAME-0 .. NAME-(K-1)
#   --dry-run          print the commands, run nothing
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_timeout=300
parse_options "$TPU_OPTIONS timeout= num-slices=" "$@"
require_options name zone
require_count timeout 0
require_count num-slices 1

# The loop is its own process group (launch.sh starts it with setsid): signal the whole group.
stop=$(snippet LOGS="$REMOTE_LOGS" TIMEOUT="$opt_timeout" <<'SH'
  pid_file="$HOME/@LOGS@/launch.pid";
  pid=$(cat "$pid_file" 2>/dev/null) || pid=;
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "pretrax-stop: nothing running on $(hostname)"; exit 0; fi;
  kill -TERM -"$pid";
  waited=0;
  while [ -f "$pid_file" ] && kill -0 "$pid" 2>/dev/null && [ "$waited" -lt @TIMEOUT@ ]; do sleep 1; waited=$((waited + 1)); done;
  if [ -f "$pid_file" ] && kill -0 "$pid" 2>/dev/null; then echo "pretrax-stop: still running on $(hostname) after @TIMEOUT@ s; to force: kill -KILL -$pid" >&2; exit 1; fi;
  echo "pretrax-stop: stopped on $(hostname)"
SH
)

location_flags
tpu_nodes
require_gcloud
for node in "${NODES[@]}"; do
  tpu_ssh "$node" all "$stop"
done
