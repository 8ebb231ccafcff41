#!/usr/bin/env bash
# Fetch, here, the Python 3.12 x86-64 wheels that benchmarks/gpu.sh installs on a GPU machine that
# cannot reach a package index. That image already holds jax (CUDA), flax, optax, orbax, numpy,
# sentencepiece, pytest and friends; what pretrax needs beyond them is below, each pinned and
# without its dependencies (--no-deps), so nothing the image has is replaced.
#
#   bash benchmarks/gpu_wheels.sh [DIR]     # DIR defaults to .wheels (git-ignored); carry it along
#
# Usage with the device tool: run this here, then run `bash benchmarks/gpu.sh` there with
# carry [".wheels"].
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.wheels}
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python

BINARY=(  # binary wheels for CPython 3.12 on manylinux x86-64
  grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 portpicker==1.6.0
  tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 googleapis-common-protos==1.70.0
  immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0 termcolor==3.3.0 toml==0.10.2
  tensorboardX==2.6.5 importlib_resources==7.1.0
)
SOURCE_ONLY=(promise==2.3)  # published as a source archive only: built here into a pure-Python wheel

mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DIR" "${BINARY[@]}"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$DIR" "${SOURCE_ONLY[@]}"
echo "wheels in $DIR ($(du -sh "$DIR" | cut -f1)):"
ls "$DIR"
