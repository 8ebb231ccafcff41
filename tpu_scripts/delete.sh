#!/usr/bin/env bash
# Delete a TPU VM, or a queued resource together with its TPU VM(s). Checkpoints in a shared
# run.dir (a bucket) stay; anything on the workers' own disks is lost.
#
# usage: tpu_scripts/delete.sh --name NAME --zone ZONE [--queued] [--quiet] [options]
#
#   --name NAME        the TPU VM (or queued resource)
#   --zone ZONE        its zone
#   --project PROJECT  default: gcloud's configured project
#   --queued           delete the queued resource NAME and its nodes (all slices)
#   --quiet            do not ask for confirmation
#   --dry-run          print the command, run nothing
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_queued=0 opt_quiet=0
parse_options "$TPU_OPTIONS queued quiet" "$@"
require_options name zone

location_flags
quiet=()
((!opt_quiet)) || quiet=(--quiet)
require_gcloud
if ((opt_queued)); then
  run gcloud compute tpus queued-resources delete "$opt_name" "${LOCATION[@]}" --force "${quiet[@]}"
else
  run gcloud compute tpus tpu-vm delete "$opt_name" "${LOCATION[@]}" "${quiet[@]}"
fi
