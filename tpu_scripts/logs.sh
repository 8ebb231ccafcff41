#!/usr/bin/env bash
# Show the end of the training log of one worker or of all (launch.sh writes
# ~/pretrax-logs/worker-$(hostname).log on each), follow it, or copy the logs here.
#
# usage: tpu_scripts/logs.sh --name NAME --zone ZONE [--worker N|all] [--lines N | --follow | --fetch DIR]
#
#   --name NAME        the TPU VM
#   --zone ZONE        its zone
#   --project PROJECT  default: gcloud's configured project
#   --worker W         worker index, a list (0,3), a range (0-3) or all (default 0: it holds the
#                      progress; pretrax logs from process 0 only)
#   --lines N          how many lines from the end (default 100)
#   --follow           keep printing as lines arrive (Ctrl-C ends it)
#   --fetch DIR        copy the workers' log files into DIR/pretrax-logs/ instead
#   --dry-run          print the commands, run nothing
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_worker=0 opt_lines=100 opt_follow=0 opt_fetch=""
parse_options "$TPU_OPTIONS worker= lines= follow fetch=" "$@"
require_options name zone
require_count lines 1
[[ $opt_worker =~ ^(all|[0-9]+([,-][0-9]+)*)$ ]] || die "--worker must be N, N,M, N-M or all, got '$opt_worker'"
[[ -z $opt_fetch ]] || ((!opt_follow)) || die "--fetch copies the files; it does not go with --follow"

location_flags
require_gcloud
if [[ -n $opt_fetch ]]; then
  run mkdir -p "$opt_fetch"
  run gcloud compute tpus tpu-vm scp --recurse "$opt_name:$REMOTE_LOGS" "$opt_fetch" "${LOCATION[@]}" "--worker=$opt_worker"
else
  follow=""
  ((!opt_follow)) || follow=" -f"
  # -v: each log starts with its file name, which names the worker
  tpu_ssh "$opt_name" "$opt_worker" "tail -v -n $opt_lines$follow \"\$HOME\"/$REMOTE_LOGS/worker-*.log"
fi
