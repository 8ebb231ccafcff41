#!/usr/bin/env bash
# Submit pretrax training to a SLURM cluster of GPU nodes (tpu_scripts/slurm/train.sbatch): one
# process per node using all its GPUs, jax.distributed set up from SLURM's variables, requeued
# and resumed from the newest checkpoint after a preemption.
#
# usage: tpu_scripts/slurm.sh --nodes N --config CONFIG [options] [-- key=value ...]
#
#   --nodes N            nodes to use
#   --config CONFIG      YAML config, relative to this repository (the job runs in it)
#   --gpus-per-node G    default 8
#   --run-dir DIR        sets run.dir; must be on a filesystem every node shares
#   --partition P        SLURM partition
#   --account A          SLURM account
#   --time T             time limit, e.g. 2-00:00:00
#   --job-name NAME      default pretrax
#   --venv DIR           virtual environment holding pretrax, on every node (default: .venv here)
#   --dry-run            print the commands, run nothing
#   -- key=value ...     config overrides, passed to pretrax train as they are
#
# The job's output goes to runs/slurm-logs/NAME-JOBID.out in this repository.
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_nodes="" opt_config="" opt_gpus_per_node=8 opt_run_dir="" opt_partition="" opt_account=""
opt_time="" opt_job_name=pretrax opt_venv=$REPO_ROOT/.venv
parse_options "nodes= config= gpus-per-node= run-dir= partition= account= time= job-name= venv= --" "$@"
require_options nodes config
require_count nodes 1
require_count gpus-per-node 1
[[ $opt_venv != *,* ]] || die "--venv must not contain a comma (sbatch --export splits on commas)"

flags=("--job-name=$opt_job_name" "--nodes=$opt_nodes" --ntasks-per-node=1 "--gpus-per-node=$opt_gpus_per_node")
[[ -z $opt_partition ]] || flags+=("--partition=$opt_partition")
[[ -z $opt_account ]] || flags+=("--account=$opt_account")
[[ -z $opt_time ]] || flags+=("--time=$opt_time")
flags+=("--chdir=$REPO_ROOT" "--output=$REPO_ROOT/runs/slurm-logs/%x-%j.out" "--export=ALL,PRETRAX_VENV=$opt_venv")
train_args=("$opt_config")
[[ -z $opt_run_dir ]] || train_args+=("run.dir=$opt_run_dir")
train_args+=("${EXTRA[@]}")

require_tool sbatch "run this on the cluster's login node (SLURM's sbatch submits the job)"
run mkdir -p "$REPO_ROOT/runs/slurm-logs"
run sbatch "${flags[@]}" "$REPO_ROOT/tpu_scripts/slurm/train.sbatch" "${train_args[@]}"
