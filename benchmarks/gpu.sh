#!/usr/bin/env bash
# All of pretrax's GPU work in one call of under 8 minutes on one H100/H200, run from the repo root:
#   1. install what the GPU image lacks, from the wheels benchmarks/gpu_wheels.sh put in .wheels
#      (the machine reaches no package index), then pretrax itself (editable, no dependencies)
#   2. tests/test_attention_backends.py on the GPU, the real cuDNN kernel included
#   3. pretrax bench: gpt2_small and decoder_1b, each with model.attention=xla and =cudnn
#   4. the rows for docs/benchmarks.md ("### GPU"), printed last
# Every step has a time limit, and all of them together stay inside GPU_BUDGET_S (450 s); a step
# that fails or runs out is reported with the end of its log, and the next one still runs.
#
#   bash benchmarks/gpu_wheels.sh        # here, with an index: fetch the wheels into .wheels
#   bash benchmarks/gpu.sh               # there: logs and JSON figures go to $OUT (/tmp/pretrax-gpu)
# LOGS_TGZ=PATH also packs $OUT into one archive (for a runner that returns only a few files).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.wheels}
OUT=${OUT:-/tmp/pretrax-gpu}
BUDGET=${GPU_BUDGET_S:-450}
SITE=/tmp/pretrax-site  # the carried wheels go here, ahead of the image's packages on PYTHONPATH
mkdir -p "$OUT"
failed=()

# step NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (less if the budget is nearly
# spent); its stdout goes to $OUT/NAME.out, its stderr to $OUT/NAME.log
step() {
  local name=$1 limit=$2 left=$((BUDGET - SECONDS)) start=$SECONDS rc
  shift 2
  if ((limit > left)); then limit=$left; fi
  if ((limit < 15)); then
    echo "== $name: not run, the ${BUDGET} s budget is spent"
    failed+=("$name (not run)")
    return 1
  fi
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  rc=$?
  echo "   exit $rc after $((SECONDS - start)) s"
  if ((rc != 0)); then
    failed+=("$name (exit $rc$([ "$rc" = 124 ] && echo ", out of time"))")
    tail -n 20 "$OUT/$name.out" "$OUT/$name.log"
  fi
  return "$rc"
}

install_wheels() {  # run by `bash -c` under timeout, hence exported
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "no wheels in $WHEELS: run benchmarks/gpu_wheels.sh first"; return 1; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
}

echo "pretrax GPU run: $(date -u +%F' '%H:%M' UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHON WHEELS SITE PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS=cuda
export -f install_wheels
step wheels 60 bash -c install_wheels
# the `pretrax` command; the steps below need only PYTHONPATH. --no-build-isolation: no index to fetch setuptools from
step pretrax-install 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .
step check 60 "$PYTHON" -c "import jax, grain, tensorflow_datasets, pretrax.cli
print('jax', jax.__version__, jax.devices())"

step attention-tests 150 env PRETRAX_TEST_PLATFORM=gpu "$PYTHON" -m pytest tests/test_attention_backends.py \
  -q -rs -p no:cacheprovider
grep -E "passed|failed|error" "$OUT/attention-tests.out" | tail -n 1

# the configs' own shapes; decoder_1b with attention recomputed in the backward pass (docs/benchmarks.md)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
for run in "gpt2_small xla 20 75" "gpt2_small cudnn 20 75" "decoder_1b cudnn 10 100" "decoder_1b xla 10 100"; do
  read -r config attention steps limit <<<"$run"
  extra=()
  if [ "$config" = decoder_1b ]; then extra=(model.remat=attention); fi
  step "bench-$config-$attention" "$limit" "$PYTHON" -m pretrax.cli bench "benchmarks/configs/$config.yaml" \
    "model.attention=$attention" "${extra[@]}" --steps "$steps" --json
done

echo
echo "== rows for docs/benchmarks.md (GPU; command: bash benchmarks/gpu.sh)"
"$PYTHON" - "$OUT" <<'EOF'
import glob, json, os, sys

print("| config | attention | device | compile | step time | tokens/s | TFLOP/s per device | MFU | peak memory | loss |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench-*.out"))):
    _, config, attention = os.path.basename(path)[:-4].split("-")
    try:
        with open(path) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"| {config} | {attention} | not measured (see {path[:-4]}.log) |" + " |" * 7)
        continue
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    memory = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.1f} GiB"
    print(f"| {config} | {attention} | {r['devices']} x {r['device_kind']} | {r['compile_s']:.1f} s "
          f"| {r['step_time_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {r['tflops_per_device']:.1f} "
          f"| {mfu} | {memory} | {r['final_loss']:.3f} |")
print("decoder_1b runs with model.remat=attention; MFU against the bf16 dense peak of the device kind")
EOF

echo "whole script: $SECONDS s"
if [ -n "${LOGS_TGZ:-}" ]; then tar -czf "$LOGS_TGZ" -C "$(dirname "$OUT")" "$(basename "$OUT")"; fi
if ((${#failed[@]})); then
  printf 'not ok: %s\n' "${failed[@]}"
  exit 1
fi
echo "all steps ok"
