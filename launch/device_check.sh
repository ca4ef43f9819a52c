#!/usr/bin/env bash
# One prepared device check (issue 21), on whatever JAX backend it finds, in under 8 minutes on one
# GPU; --smoke: the same steps with tiny sizes, on the CPU in a couple of minutes (tests/test_device_check.py).
#
#   bash launch/device_check.sh [--smoke]
#
# Writes under $OUT (set by the device tool) or benchmarks/device_check/: env.json (versions,
# devices, missing packages), train.json (simp at 256 and 1024 on CIFAR-10-shaped batches, resnet18
# at 64x64, float32 and bfloat16: images/s, forward, the assignment's share, peak device memory),
# assign.json (B x K grid sequential vs parallel; rounds with and without the hand-over; real
# training tables), e2e_results.json and e2e_timing.json (2 epochs of simp on synthetic images
# made on the spot: no TensorFlow, no network), profile.json (XLA ops of a few traced steps of that
# run by time) and summary.md. The trace itself is left in the e2e workdir under /tmp.
#
# Nothing it runs imports TensorFlow, tfds or tensorboardX. A pure-Python package it needs and
# the image lacks (ml-collections and its PyYAML; grain, the feed, with array-record and portpicker) is installed from the wheels in .whl/, fetched on
# a machine with a registry (--python-version: the device's Python; see README):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections PyYAML grain array-record portpicker
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    *) echo "error: unknown argument $arg: use --smoke or nothing" >&2; exit 2 ;;
  esac
done
out=${OUT:-benchmarks/device_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

# Packages the device image lacks, from the wheels in .whl/ (no registry is reached).
wheels=()
for pair in ml_collections:ml-collections yaml:PyYAML grain:grain array_record:array-record \
            portpicker:portpicker; do
  module=${pair%%:*} dist=${pair#*:}
  if ! "$py" -c "import $module" 2>/dev/null; then
    if ! compgen -G ".whl/*" >/dev/null; then
      echo "error: $dist is not installed and .whl/ holds no wheels: on a machine with a registry" \
           "run pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections PyYAML grain array-record portpicker, and carry .whl/" >&2
      exit 2
    fi
    "$py" -m pip install -q --no-index --no-deps --find-links .whl --target /tmp/device_check_site "$dist"
    export PYTHONPATH=/tmp/device_check_site:$PYTHONPATH
    wheels+=("$dist")
  fi
done
export DEVICE_CHECK_WHEELS="${wheels[*]:-}"

if (( smoke )); then
  train=(--train_cases=simp:32:32,resnet18:64:2 --steps=1 --repeats=1)
  assign=(--assign_batch_sizes=64 --assign_num_clusters=3,10 --staircase_sizes=40x3
          --table_epochs=1 --repeats=1)
  num_images=256 batch=64 profile_steps=2
else
  train=(--train_cases=simp:32:256,simp:32:1024,resnet18:64:256 --steps=20 --repeats=3)
  assign=(--table_epochs=3)
  num_images=16384 batch=256 profile_steps=5
fi
t0=$SECONDS
step() { echo "== $1 ($(( SECONDS - t0 )) s)"; }

step environment
"$py" launch/device_check.py env "$out/env.json"
step "train suite"
"$py" -m ohc_jax.benchmark --suite=train --compute_dtypes=float32,bfloat16 "${train[@]}" \
    --out="$out/train.json"
step "assign suite"
"$py" -m ohc_jax.benchmark --suite=assign "${assign[@]}" --out="$out/assign.json"
step "end to end"
work=$(mktemp -d /tmp/device_check.XXXXXX)
"$py" launch/device_check.py images "$work/images" "$num_images" 32
"$py" -m ohc_jax.main --workdir="$work/run" --config.dataset="folder:$work/images" \
    --config.encoder=simp --config.num_epochs=2 --config.batch_size="$batch" \
    --config.eval_batch_size=1024 --config.profile_steps="$profile_steps" \
    --config.progress_bar=False --config.plots_every_epochs=0
cp "$work/run/results.json" "$out/e2e_results.json"
cp "$work/run/timing.json" "$out/e2e_timing.json"
step profile
"$py" launch/device_check.py profile "$work/run/profile" "$out/profile.json"
step summary
"$py" launch/device_check.py summary "$out"
echo "== done in $(( SECONDS - t0 )) s: $out (trace: $work/run/profile)"
