#!/usr/bin/env bash
# Start `pretrax train CONFIG [key=value ...]` on every worker of a TPU VM, in the background,
# inside a restart loop: when pretrax exits non-zero (a crash, a lost peer, a killed process) the
# loop waits and runs the same command again, which resumes from the newest complete checkpoint in
# run.dir. It stops when pretrax exits 0, on exit code 2 (a config, data or checkpoint error that a
# restart cannot fix), after --max-restarts restarts, or on stop.sh. pretrax train starts
# jax.distributed from the worker's environment (pretrax.parallel.distributed.initialize_from_env).
#
# With --sweep instead of --config, the loop runs `pretrax sweep SWEEP --worker`: this TPU VM (all
# its hosts together) becomes one worker of a sweep that any number of TPU VMs share. Run the same
# launch.sh --sweep command for each VM; each takes points until none is left (docs/sweeps.md).
#
# usage: tpu_scripts/launch.sh --name NAME --zone ZONE (--config CONFIG | --sweep SWEEP) [options] [-- ARG ...]
#
#   --name NAME            the TPU VM
#   --zone ZONE            its zone
#   --config CONFIG        YAML config, relative to ~/pretrax on the workers (e.g. configs/gpt1.yaml)
#   --sweep SWEEP          a sweep file instead, relative to ~/pretrax (e.g. configs/sweeps/tiny_widths.yaml)
#   --run-dir DIR          sets run.dir (with --sweep: the sweep's --dir); on a pod it must be a
#                          directory every worker shares (gs://bucket/path), as each writes its own
#                          checkpoint shards
#   --max-restarts N       give up after N restarts (default 10)
#   --restart-delay SEC    wait before a restart (default 30)
#   --project PROJECT      default: gcloud's configured project
#   --num-slices K         a multi-slice queued resource: launch on NAME-0 .. NAME-(K-1)
#   --dry-run              print the commands, run nothing
#   -- ARG ...             passed to pretrax as they are: config overrides (key=value) for train,
#                          options for a sweep worker (--stale-after SECONDS, --retry-failed)
#
# Each worker logs to ~/pretrax-logs/worker-$(hostname).log (tpu_scripts/logs.sh reads them);
# a second launch while a run is going is refused (tpu_scripts/stop.sh ends it).
set -euo pipefail
here=${BASH_SOURCE[0]%/*} && [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

opt_config="" opt_sweep="" opt_run_dir="" opt_max_restarts=10 opt_restart_delay=30
parse_options "$TPU_OPTIONS config= sweep= run-dir= max-restarts= restart-delay= num-slices= --" "$@"
if [[ -z $opt_config$opt_sweep ]]; then
  missing=()
  [[ -n $opt_name ]] || missing+=(--name)
  [[ -n $opt_zone ]] || missing+=(--zone)
  die "missing required option(s): ${missing[*]}${missing[*]:+ }--config (or --sweep) (see --help)"
fi
require_options name zone
[[ -z $opt_config || -z $opt_sweep ]] || die "give --config (train one run) or --sweep (be a sweep worker), not both"
require_count max-restarts 0
require_count restart-delay 0
require_count num-slices 1

# The loop, run by `sh -c` on each worker with pretrax's arguments (`train CONFIG key=value ...` or
# `sweep SWEEP --worker ...`) as its own ("$@"), so no user text is ever pasted into code. A signal (stop.sh, shutdown) ends it without a restart.
loop=$(snippet LOGS="$REMOTE_LOGS" MAX="$opt_max_restarts" DELAY="$opt_restart_delay" <<'SH'
  pid_file="$HOME/@LOGS@/launch.pid";
  echo $$ > "$pid_file";
  trap 'rm -f "$pid_file"' EXIT;
  trap stopping=1 INT TERM;
  stopping=; restarts=0;
  while [ -z "$stopping" ]; do
    echo "pretrax-launch: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): pretrax $* (restart $restarts of @MAX@)";
    pretrax "$@";
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

if [[ -n $opt_sweep ]]; then
  pretrax_args=(sweep "$opt_sweep" --worker)
  [[ -z $opt_run_dir ]] || pretrax_args+=(--dir "$opt_run_dir")
else
  pretrax_args=(train "$opt_config")
  [[ -z $opt_run_dir ]] || pretrax_args+=("run.dir=$opt_run_dir")
fi
pretrax_args+=("${EXTRA[@]}")

# Run on each worker by its login shell: refuse a second run, then detach the loop (setsid: its own
# process group, which stop.sh signals; nohup and /dev/null: it outlives the ssh session).
start=$(snippet SRC="$REMOTE_SRC" LOGS="$REMOTE_LOGS" VENV="$REMOTE_VENV" LOOP="$(quote "$loop")" \
  ARGS="$(quote_words "${pretrax_args[@]}")" <<'SH'
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
