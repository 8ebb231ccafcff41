#!/usr/bin/env bash
# Install pretrax on every worker of a TPU VM: the source in ~/pretrax, a virtual environment in
# ~/pretrax-venv (Python from uv, as the TPU images ship an older one) with `pip install -e .[tpu]`.
# Running it again replaces ~/pretrax (stop a running job first) and reuses the environment.
#
# usage: tpu_scripts/setup.sh --name NAME --zone ZONE [--source DIR | --repo URL [--ref REF]] [options]
#
#   --name NAME       the TPU VM
#   --zone ZONE       its zone
#   --project PROJECT default: gcloud's configured project
#   --source DIR      copy this checkout (uncommitted changes included; .git, .venv, runs/ left out);
#                     the default, with DIR = the checkout holding this script
#   --repo URL        git clone URL on every worker instead
#   --ref REF         with --repo: the branch, tag or commit to check out
#   --python VERSION  Python for the environment (default 3.11)
#   --num-slices K    a multi-slice queued resource: set up NAME-0 .. NAME-(K-1)
#   --dry-run         print the commands, run nothing
#
# Next: tpu_scripts/launch.sh --name NAME --zone ZONE --config CONFIG
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_source="" opt_repo="" opt_ref="" opt_python=3.11
parse_options "$TPU_OPTIONS source= repo= ref= python= num-slices=" "$@"
require_options name zone
require_count num-slices 1
[[ -z $opt_source || -z $opt_repo ]] || die "give --source DIR or --repo URL, not both"
[[ -z $opt_ref || -n $opt_repo ]] || die "--ref goes with --repo (a --source copy is the directory as it is)"
[[ $opt_python =~ ^3\.[0-9]+$ ]] || die "--python must look like 3.11, got '$opt_python'"
if [[ -z $opt_repo ]]; then
  source_dir=${opt_source:-$REPO_ROOT}
  [[ -f $source_dir/setup.py ]] || die "--source $source_dir is not a pretrax checkout (no setup.py in it)"
fi

# Fetch the source into ~/pretrax: from the copied archive, or by cloning.
archive=pretrax-src.tar.gz
if [[ -z $opt_repo ]]; then
  fetch="rm -rf $REMOTE_SRC; mkdir $REMOTE_SRC; tar -xzf $archive -C $REMOTE_SRC; rm -f $archive;"
else
  fetch="rm -rf $REMOTE_SRC; git clone --quiet $(quote "$opt_repo") $REMOTE_SRC;"
  [[ -z $opt_ref ]] || fetch+=" git -C $REMOTE_SRC checkout --quiet $(quote "$opt_ref");"
fi
# set -e: the first failing step ends it, and gcloud reports the worker's exit code.
install=$(snippet FETCH="$fetch" SRC="$REMOTE_SRC" VENV="$REMOTE_VENV" PYTHON="$opt_python" <<'SH'
  set -e; cd "$HOME";
  @FETCH@
  export PATH="$HOME/.local/bin:$PATH";
  command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh;
  uv venv --quiet --allow-existing --python @PYTHON@ "$HOME/@VENV@";
  uv pip install --quiet --python "$HOME/@VENV@/bin/python" -e "$HOME/@SRC@[tpu]";
  "$HOME/@VENV@/bin/pretrax" --help >/dev/null;
  echo "pretrax installed on $(hostname)"
SH
)

location_flags
tpu_nodes
require_gcloud
if [[ -z $opt_repo ]]; then
  local_archive=${TMPDIR:-/tmp}/pretrax-src-$opt_name.tar.gz
  run tar -czf "$local_archive" -C "$source_dir" --exclude=.git --exclude=.venv --exclude=runs \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache .
fi
for node in "${NODES[@]}"; do
  [[ -n $opt_repo ]] || run gcloud compute tpus tpu-vm scp "$local_archive" "$node:$archive" "${LOCATION[@]}" --worker=all
  tpu_ssh "$node" all "$install"
done
[[ -n $opt_repo ]] || run rm -f "$local_archive"
slices=()
((opt_num_slices == 1)) || slices=("--num-slices=$opt_num_slices")
note "next: tpu_scripts/launch.sh $(quote_words "--name=$opt_name" "${LOCATION[@]}" "${slices[@]}") --config CONFIG"
