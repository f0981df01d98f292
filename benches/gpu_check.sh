#!/usr/bin/env bash
# On a GPU machine: build nerfx for the visible GPU, run the whole test suite (the CUDA
# tests included), run the benchmarks, and write the results to OUT_DIR:
#   info.txt (card, build, backends), build.log, tests.log, bench.json, bench.md (side by side),
#   and from `python -m nerfx.train --scene lego --fast` on the GPU: train.log, metrics.json
#   (test PSNR over time, and samples per ray by step: how fast the occupancy grid prunes),
#   a few test renders and the turntable.
# usage: benches/gpu_check.sh OUT_DIR [all|check|bench|train]
#   check: build and tests; bench: build and benchmarks; train: the main job only (after a build);
#   all (default): the three. On an H100 (2026-11-27) the build took under a minute, and the
#   benchmarks did not finish in 8 minutes: where one command may run at most 10 minutes, run
#   check, bench and train as three calls. The tests run in 8 processes (pytest-xdist) where it
#   is installed, so a test that crashes its process (a segfault) is reported and the rest run.
set -uo pipefail
out=$(realpath -m "${1:?usage: benches/gpu_check.sh OUT_DIR [all|check|train]}")
what=${2:-all}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout's nerfx, however it was built
start=$SECONDS
tests_rc=0 bench_rc=0 train_rc=0
if [ "$what" != train ]; then

cap=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=$cap NERFX_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown"; date -u; } >"$out/info.txt" 2>&1
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
  # An environment pip may not write to: build in place and import from the checkout.
  echo "pip install failed; building in place" | tee -a "$out/build.log"
  if ! python3 setup.py build_ext --inplace >>"$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; echo "build failed"; exit 1
  fi
fi
echo "build: $((SECONDS - start)) s"
python3 -m nerfx.info >>"$out/info.txt" 2>&1
cat "$out/info.txt"

if [ "$what" != bench ]; then
# Which compiled argument checks crash instead of raising (the H100 segfault of 2026-11-27),
# then the test file that crashed, alone, with its native stack on a crash.
python3 benches/probe_op_errors.py 2>&1 | tee "$out/probe_op_errors.log"
python3 -X faulthandler -m pytest tests/ops/test_adam.py -q -p no:cacheprovider \
  >"$out/test_adam.log" 2>&1
echo "tests/ops/test_adam.py alone: rc=$?"; tail -3 "$out/test_adam.log"
xdist=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8")
python3 -m pytest tests -q -rs -p no:cacheprovider $xdist >"$out/tests.log" 2>&1
tests_rc=$?
grep -E "FAILED|ERROR|crashed|Segmentation" "$out/tests.log" | head -20
tail -3 "$out/tests.log"
echo "tests: rc=$tests_rc, $((SECONDS - start)) s"
fi

if [ "$what" != check ]; then
NERFX_BENCH_MD="$out/bench.md" python3 -m pytest benches --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$out/bench.json" --durations=15 >"$out/bench.log" 2>&1
bench_rc=$?
cat "$out/bench.md" 2>/dev/null || tail -30 "$out/bench.log"
echo "benchmarks: rc=$bench_rc, $((SECONDS - start)) s"
fi
fi

if [ "$what" = all ] || [ "$what" = train ]; then

# The main job on the GPU (the checkpoint stays behind: it is too big to bring back).
run=$(mktemp -d)/lego-fast
NERFX_DATA=${NERFX_DATA:-$(mktemp -d)} timeout 420 python3 -m nerfx.train --scene lego --fast \
  --out "$run" --video-frames 24 >"$out/train.log" 2>&1
train_rc=$?
tr '\r' '\n' <"$out/train.log" | grep -v '%|' | tail -8
mkdir -p "$out/run"
cp "$run/metrics.json" "$run/config.json" "$run"/turntable.* "$out/run/" 2>/dev/null
cp $(ls "$run"/renders/test_*.png 2>/dev/null | head -3) "$out/run/" 2>/dev/null
python3 - "$run/metrics.json" <<'PY' 2>/dev/null | tee "$out/samples_per_ray.txt"
import json, sys
m = json.load(open(sys.argv[1]))
print("test PSNR at seconds:", m.get("test_psnr_at_seconds"))
print("samples per ray at step (trained):", m.get("samples_per_ray_at_step"))
print("samples per ray at step (marched, before compaction):", m.get("marched_per_ray_at_step"))
PY
echo "train: rc=$train_rc, total $((SECONDS - start)) s"
fi
exit $(( tests_rc || bench_rc || train_rc ))
