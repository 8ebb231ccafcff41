# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts sourcing it
# Sourced by every script in tpu_scripts/: option parsing, run-or-print (--dry-run),
# tool checks, and where pretrax lives on a TPU worker. Not meant to be run.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "${0##*/}: needs bash >= 4.4, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 2
fi

# Layout on every TPU worker, relative to the login user's $HOME. setup.sh creates it,
# launch.sh / logs.sh / stop.sh use it.
REMOTE_SRC=pretrax        # the source tree; runs start in it, so CONFIG paths are relative to it
REMOTE_VENV=pretrax-venv  # the virtual environment holding pretrax and jax[tpu]
REMOTE_LOGS=pretrax-logs  # worker-HOSTNAME.log (one per worker) and launch.pid (the running loop)

PROG=${0##*/}
REPO_ROOT=$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)
DRY_RUN=0
EXTRA=()     # the arguments after `--`, for scripts that accept them
opt_dry_run=0

die() { # a user error: one line, exit 2
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

usage() { # the script's leading comment block is its --help
  local line
  while IFS= read -r line; do
    [[ $line == '#!'* ]] && continue
    [[ $line == '#'* ]] || break
    line=${line#\#}
    printf '%s\n' "${line# }"
  done <"$0"
}

# parse_options SPEC "$@": SPEC lists the options, `name=` for one taking a value, `name` for a
# flag, and `--` when arguments after `--` are accepted (into EXTRA). --name VALUE and
# --name=VALUE both work; each sets opt_NAME (dashes become underscores). --dry-run and
# --help are always accepted.
parse_options() {
  local spec=" $1 dry-run " arg key value
  shift
  while (($#)); do
    arg=$1
    case $arg in
      -h | --help) usage; exit 0 ;;
      --)
        [[ $spec == *' -- '* ]] || die "no arguments are taken after --"
        shift
        EXTRA=("$@")
        break
        ;;
      --*=*)
        key=${arg%%=*} key=${key#--} value=${arg#*=}
        [[ $spec == *" $key= "* ]] || die "unknown option --$key; valid: $(option_list "$spec")"
        ;;
      --*)
        key=${arg#--}
        if [[ $spec == *" $key "* ]]; then
          value=1
        elif [[ $spec == *" $key= "* ]]; then
          [[ $# -gt 1 && $2 != --* ]] || die "option $arg needs a value"
          value=$2
          shift
        else
          die "unknown option $arg; valid: $(option_list "$spec")"
        fi
        ;;
      *) die "unexpected argument '$arg'; options start with -- (see --help)" ;;
    esac
    printf -v "opt_${key//-/_}" '%s' "$value"
    shift
  done
  DRY_RUN=$opt_dry_run
}

option_list() {
  local word out=""
  for word in $1; do
    [[ $word == -- ]] || out+="${out:+ }--${word%=}"
  done
  printf '%s' "$out"
}

require_options() { # NAME...: the options that must be given, all named in one line
  local name var missing=()
  for name in "$@"; do
    var=opt_${name//-/_}
    [[ -n ${!var} ]] || missing+=("--$name")
  done
  ((${#missing[@]} == 0)) || die "missing required option(s): ${missing[*]} (see --help)"
}

require_count() { # NAME MIN: option --NAME must be an integer >= MIN
  local var=opt_${1//-/_}
  if ! [[ ${!var} =~ ^[0-9]+$ ]] || ((${!var} < $2)); then
    die "--$1 must be an integer >= $2, got '${!var}'"
  fi
}

require_tool() { # TOOL HOW: a real run needs TOOL on PATH; a dry run needs nothing
  ((DRY_RUN)) || command -v "$1" >/dev/null 2>&1 || {
    printf '%s: error: %s is not on PATH; %s\n' "$PROG" "$1" "$2" >&2
    exit 127
  }
}

require_gcloud() {
  require_tool gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then run 'gcloud auth login'"
}

quote() { # one word, quoted so that any POSIX shell (and Python's shlex) reads it back unchanged
  local squote="'\\''"
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$squote}"
  fi
}

quote_words() { # WORD...: one command line
  local word out=""
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() { # COMMAND...: with --dry-run print it (pasteable), else echo it to stderr and run it
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

note() { # a hint for the next step; a dry run prints only commands
  ((DRY_RUN)) || printf '%s\n' "$*" >&2
}

# --- Cloud TPU ---------------------------------------------------------------------------------

TPU_OPTIONS="name= zone= project="  # every TPU script takes these
opt_name="" opt_zone="" opt_project="" opt_num_slices=1

location_flags() { # sets LOCATION: --zone and, when given, --project
  LOCATION=("--zone=$opt_zone")
  [[ -z $opt_project ]] || LOCATION+=("--project=$opt_project")
}

tpu_nodes() { # sets NODES: NAME, or NAME-0 .. NAME-(K-1) for a K-slice queued resource
  local i
  NODES=()
  if ((opt_num_slices > 1)); then
    for ((i = 0; i < opt_num_slices; i++)); do NODES+=("$opt_name-$i"); done
  else
    NODES=("$opt_name")
  fi
}

tpu_ssh() { # NODE WORKER COMMAND: run COMMAND on the worker(s) of NODE (WORKER: N, N,M, N-M or all)
  run gcloud compute tpus tpu-vm ssh "$1" "${LOCATION[@]}" "--worker=$2" "--command=$3"
}

snippet() { # KEY=VALUE... <<'SH': a shell snippet (for a worker) as one line, so --dry-run prints
  # one command per line; every line must end in ; then do else { or &. Then @KEY@ becomes VALUE
  # (after the joining, which leaves VALUE's own spaces alone).
  local text pair
  IFS= read -r -d '' text || true
  text=${text//$'\n'/ }
  while [[ $text == *'  '* ]]; do text=${text//  / }; done
  text=${text# } text=${text% }
  for pair in "$@"; do
    text=${text//"@${pair%%=*}@"/"${pair#*=}"}  # quoted: an & in VALUE stays an &
  done
  printf '%s' "$text"
}
