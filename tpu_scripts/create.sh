#!/usr/bin/env bash
# Create a Cloud TPU VM, or a queued resource that creates it once capacity is free.
#
# usage: tpu_scripts/create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]
#
#   --name NAME              the TPU VM (or queued resource and its node)
#   --zone ZONE              e.g. us-east5-a; the accelerator type must be offered there
#   --accelerator-type TYPE  e.g. v4-32, v5litepod-64, v5p-128, v6e-64
#   --version VERSION        TPU runtime image; default by generation: v2/v3/v4 tpu-ubuntu2204-base,
#                            v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --project PROJECT        default: gcloud's configured project
#   --spot                   spot capacity: cheaper, preempted at any time (then delete and re-create;
#                            the run resumes from its newest checkpoint)
#   --queued                 create a queued resource (waits for capacity) instead of the VM directly
#   --num-slices K           with --queued: K slices named NAME-0 .. NAME-(K-1), joined over the
#                            data-center network (multi-slice)
#   --dry-run                print the command, run nothing
#
# Next: tpu_scripts/setup.sh --name NAME --zone ZONE
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_accelerator_type="" opt_version="" opt_spot=0 opt_queued=0
parse_options "$TPU_OPTIONS accelerator-type= version= spot queued num-slices=" "$@"
require_options name zone accelerator-type
require_count num-slices 1
((opt_num_slices == 1 || opt_queued)) || die "--num-slices needs --queued (multi-slice is requested as a queued resource)"

default_version() { # ACCELERATOR_TYPE -> the runtime image for its generation
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

version=$opt_version
if [[ -z $version ]]; then
  version=$(default_version "$opt_accelerator_type") ||
    die "no default --version for accelerator type '$opt_accelerator_type' (known: v2-*, v3-*, v4-*, v5litepod-*, v5p-*, v6e-*); pass --version (list: gcloud compute tpus tpu-vm versions list --zone $opt_zone)"
fi

location_flags
spot=()
((opt_spot)) && spot=(--spot)
require_gcloud
if ((opt_queued)); then
  if ((opt_num_slices > 1)); then
    nodes=("--node-count=$opt_num_slices" "--node-prefix=$opt_name")
  else
    nodes=("--node-id=$opt_name")
  fi
  run gcloud compute tpus queued-resources create "$opt_name" "${LOCATION[@]}" \
    "--accelerator-type=$opt_accelerator_type" "--runtime-version=$version" "${nodes[@]}" "${spot[@]}"
  note "queued; it is ready when its state is ACTIVE: gcloud compute tpus queued-resources describe $(quote_words "$opt_name" "${LOCATION[@]}")"
else
  run gcloud compute tpus tpu-vm create "$opt_name" "${LOCATION[@]}" \
    "--accelerator-type=$opt_accelerator_type" "--version=$version" "${spot[@]}"
fi
slices=()
((opt_num_slices == 1)) || slices=("--num-slices=$opt_num_slices")
note "next: tpu_scripts/setup.sh $(quote_words "--name=$opt_name" "${LOCATION[@]}" "${slices[@]}")"
