#!/usr/bin/env bash
# Start `pretrax train CONFIG [key=value ...]` on every worker of a TPU VM, in the background,
# inside a restart loop: when pretrax exits non-zero (a crash, a lost peer, a killed process) the
# loop waits and runs the same command again, which resumes from the newest complete checkpoint in
# run.dir. It stops when pretrax exits 0, on exit code 2 (a config, data or checkpoint error that a
# restart cannot fix), after --max-restarts restarts, or on stop.sh. pretrax train starts
# jax.distributed from the worker's environment (pretrax.parallel.distributed.initialize_from_env).
#
# usage: tpu_scripts/launch.sh --name NAME --zone ZONE --config CONFIG [options] [-- key=value ...]
#
#   --name NAME            the TPU VM
#   --zone ZONE            its zone
#   --config CONFIG        YAML config, relative to ~/pretrax on the workers (e.g. configs/gpt1.yaml)
#   --run-dir DIR          sets run.dir; on a pod it must be a directory every worker shares
#                          (e.g. a bucket mounted with gcsfuse), as each writes its own checkpoint shards
#   --max-restarts N       give up after N restarts (default 10)
#   --restart-delay SEC    wait before a restart (default 30)
#   --project PROJECT      default: gcloud's configured project
#   --num-slices K         a multi-slice queued resource: launch on NAME-0 .. NAME-(K-1)
#   --dry-run              print the commands, run nothing
#   -- key=value ...       config overrides, passed to pretrax train as they are
#
# Each worker logs to ~/pretrax-logs/worker-$(hostname).log (tpu_scripts/logs.sh reads them);
# a second launch while a run is going is refused (tpu_scripts/stop.sh ends it).
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_config="" opt_run_dir="" opt_max_restarts=10 opt_restart_delay=30
parse_options "$TPU_OPTIONS config= run-dir= max-restarts= restart-delay= num-slices= --" "$@"
require_options name zone config
require_count max-restarts 0
require_count restart-delay 0
require_count num-slices 1

# The loop, run by `sh -c` on each worker with `CONFIG key=value ...` as its arguments ("$@"), so
# no user text is ever pasted into code. A signal (stop.sh, shutdown) ends it without a restart.
loop=$(snippet LOGS="$REMOTE_LOGS" MAX="$opt_max_restarts" DELAY="$opt_restart_delay" <<'SH'
  pid_file="$HOME/@LOGS@/launch.pid";
  echo $$ > "$pid_file";
  trap 'rm -f "$pid_file"' EXIT;
  trap stopping=1 INT TERM;
  stopping=; restarts=0;
  while [ -z "$stopping" ]; do
    echo "pretrax-launch: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): pretrax train $* (restart $restarts of @MAX@)";
    pretrax train "$@";
    code=$?;
    if [ "$code" -eq 0 ]; then echo "pretrax-launch: finished"; exit 0; fi;
    if [ -n "$stopping" ]; then break; fi;
    if [ "$code" -eq 2 ]; then echo "pretrax-launch: exit code 2 (a config, data or checkpoint error): not restarting"; exit 2; fi;
    if [ "$restarts" -ge @MAX@ ]; then echo "pretrax-launch: exit code $code after $restarts restarts (--max-restarts @MAX@): giving up"; exit "$code"; fi;
    restarts=$((restarts + 1));
    echo "pretrax-launch: exit code $code; restarting in @DELAY@ s from the newest checkpoint";
    sleep @DELAY@;
  done;
  echo "pretrax-launch: stopped by a signal";
  exit 143
SH
)

train_args=("$opt_config")
[[ -z $opt_run_dir ]] || train_args+=("run.dir=$opt_run_dir")
train_args+=("${EXTRA[@]}")

# Run on each worker by its login shell: refuse a second run, then detach the loop (setsid: its own
# process group, which stop.sh signals; nohup and /dev/null: it outlives the ssh session).
start=$(snippet SRC="$REMOTE_SRC" LOGS="$REMOTE_LOGS" VENV="$REMOTE_VENV" LOOP="$(quote "$loop")" \
  ARGS="$(quote_words "${train_args[@]}")" <<'SH'
  cd "$HOME/@SRC@" 2>/dev/null || { echo "pretrax-launch: no ~/@SRC@ on $(hostname); run tpu_scripts/setup.sh first" >&2; exit 1; };
  mkdir -p "$HOME/@LOGS@";
  pid_file="$HOME/@LOGS@/launch.pid";
  if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then echo "pretrax-launch: a run is already going on $(hostname); end it with tpu_scripts/stop.sh" >&2; exit 1; fi;
  log="$HOME/@LOGS@/worker-$(hostname).log";
  PATH="$HOME/@VENV@/bin:$PATH" nohup setsid sh -c @LOOP@ pretrax-launch @ARGS@ >>"$log" 2>&1 </dev/null &
  echo "pretrax-launch: started on $(hostname), logging to $log"
SH
)

location_flags
tpu_nodes
require_gcloud
for node in "${NODES[@]}"; do
  tpu_ssh "$node" all "$start"
done
note "follow it: tpu_scripts/logs.sh $(quote_words "--name=${NODES[0]}" "${LOCATION[@]}") --follow"
