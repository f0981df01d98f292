#!/usr/bin/env bash
# One call on a GPU machine: build nerfx for the visible GPU, run the whole test suite (the CUDA
# tests included), run the benchmarks, and write the results to OUT_DIR:
#   info.txt (card, build, backends), build.log, tests.log, bench.json, bench.md (side by side).
# usage: benches/gpu_check.sh OUT_DIR        (about 5 minutes on an H100/H200)
set -uo pipefail
out=$(realpath -m "${1:?usage: benches/gpu_check.sh OUT_DIR}")
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$SECONDS

cap=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=$cap NERFX_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown"; date -u; } >"$out/info.txt" 2>&1
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; echo "build failed"; exit 1
fi
echo "build: $((SECONDS - start)) s"
python3 -m nerfx.info >>"$out/info.txt" 2>&1
cat "$out/info.txt"

python3 -m pytest tests -q -rs -p no:cacheprovider >"$out/tests.log" 2>&1
tests_rc=$?
tail -15 "$out/tests.log"
echo "tests: rc=$tests_rc, $((SECONDS - start)) s"

NERFX_BENCH_MD="$out/bench.md" python3 -m pytest benches --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$out/bench.json" >"$out/bench.log" 2>&1
bench_rc=$?
cat "$out/bench.md" 2>/dev/null || tail -30 "$out/bench.log"
echo "benchmarks: rc=$bench_rc, total $((SECONDS - start)) s"
exit $(( tests_rc || bench_rc ))
