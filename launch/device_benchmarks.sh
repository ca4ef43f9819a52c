#!/usr/bin/env bash
# Issue 3's accelerator figures in one run: the assign suite (sequential vs parallel, B x K grid)
# and the train suite (images/s and the assignment's share of a step), on whatever JAX sees.
#
#   bash launch/device_benchmarks.sh [benchmark flags]   # e.g. --steps=10 --repeats=2
#
# Figures are printed and saved as JSON under $OUT (set by the device tool) or benchmarks/. Where
# JAX with CUDA is installed but ml-collections is not, put its wheel in .whl/ first
# (pip download --no-deps ml-collections -d .whl): wheels found there are installed to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks}
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
backend=$(python3 -c 'import jax; print(jax.default_backend())')
python3 -c 'import jax; print("devices:", jax.devices())'
for suite in assign train; do
  python3 -m ohc_jax.benchmark --suite="$suite" --out="$out/$suite-$backend.json" "$@"
done
