#!/usr/bin/env bash
# On a GPU machine: build nerfx for the visible GPU, then, in phases that each stop at a time
# budget and keep what they wrote, write to OUT_DIR:
#   check:    info.txt (card, build, backends), build.log; probe_op_errors.log (do the compiled
#             ops' argument checks raise or crash?); tests.log (the whole suite, the CUDA tests
#             and tests/ops/test_at_scale.py's training sizes included, slowest listed);
#             sanitize_*.log (benches/sanitize_kernels.py under compute-sanitizer's memcheck,
#             racecheck and initcheck)
#   bench:    bench.md / bench.json / bench.log: the CUDA benchmarks side by side, the NeRF
#             kernels' first (their targets are issue 9's), then the image models'
#   train:    `python -m nerfx.train --scene lego --fast` on the GPU: train.log, metrics.json
#             (test PSNR over time, samples per ray by step), a few test renders, the turntable,
#             and run/profile/ (steps 300-302 profiled: trace.json, ops.txt, and syncs.txt, each
#             host synchronisation inside a step by its line of Python)
# usage: benches/gpu_check.sh OUT_DIR [all|check|bench|train|bench+train]
#   all (default) runs the three. One device command may run 10 minutes, a session has 15 of
#   device time (starts included), and a machine idle for 30 s goes back (a fresh one rebuilds):
#   make two calls back to back, `gpu_check.sh OUT check` then `gpu_check.sh OUT2 bench+train`
#   (the second keeps the first's build while the machine is warm). Run
#   benches/fetch_peer_wheels.sh here first and carry `.whl`: the peers (nerfacc, diffusers,
#   denoising-diffusion-pytorch) are not on the machine. Phase budgets in seconds,
#   from the environment: TESTS_S (default 170), SANITIZE_S (100, split over the three tools),
#   BENCH_S (200), TRAIN_S (240). Past timings of each phase: benches/RESULTS.md, GPU.
set -uo pipefail
out=$(realpath -m "${1:?usage: benches/gpu_check.sh OUT_DIR [all|check|bench|train|bench+train]}")
what=${2:-all}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout's nerfx, however it was built
start=$SECONDS
failed=0
# The benchmark peers the machine lacks, where the call carried them (benches/fetch_peer_wheels.sh).
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/peers .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/peers
  echo "peers from .whl: $(ls .whl | tr '\n' ' ')"
fi

wants() { [ "$what" = all ] || [[ "+$what+" == *"+$1+"* ]]; }

# phase NAME SECONDS LOG COMMAND...: runs COMMAND into LOG, interrupted (SIGINT, so pytest
# still writes its summary) once it has run SECONDS; a failure or a timeout is counted.
phase() {
  local name=$1 seconds=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout -s INT -k 20 "$seconds" "$@" >"$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "$name: stopped at its budget of $seconds s (partial results kept)"
  [ $rc -ne 0 ] && failed=1
  echo "$name: rc=$rc, $((SECONDS - t0)) s (total $((SECONDS - start)) s)"
  return $rc
}

if wants check || wants bench; then
  cap=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST=$cap NERFX_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    git rev-parse HEAD 2>/dev/null || echo "commit: unknown"; date -u; } >"$out/info.txt" 2>&1
  # A build of the same sources stays between calls on a warm machine (the copied tree has new
  # file times, so the sources' digest decides, not their times).
  digest=$(python3 -c 'from pathlib import Path; from nerfx import _build
print(_build.sources_digest(Path("csrc")))')
  stamp=build/gpu_check.digest
  if [ -f nerfx/_C.build.json ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ] && python3 -c \
      'from nerfx import _ext; _ext.load(); assert _ext.build_info()["cuda"]' 2>/dev/null; then
    echo "build: kept from the previous call"
  else
    if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
      # An environment pip may not write to: build in place and import from the checkout.
      echo "pip install failed; building in place" | tee -a "$out/build.log"
      if ! python3 setup.py build_ext --inplace >>"$out/build.log" 2>&1; then
        tail -40 "$out/build.log"; echo "build failed"; exit 1
      fi
    fi
    mkdir -p build && echo "$digest" >"$stamp"
  fi
  echo "build: $((SECONDS - start)) s"
  python3 -m nerfx.info >>"$out/info.txt" 2>&1
  cat "$out/info.txt"
fi

if wants check; then
  # Which compiled argument checks crash instead of raising (benches/RESULTS.md, GPU).
  phase probe 90 "$out/probe_op_errors.log" python3 benches/probe_op_errors.py
  cat "$out/probe_op_errors.log"

  xdist=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8")
  per_test=$(python3 -c 'import pytest_timeout' 2>/dev/null && echo "--timeout 120")
  # shellcheck disable=SC2086
  phase tests "${TESTS_S:-170}" "$out/tests.log" python3 -X faulthandler -m pytest tests -q -rs \
    -p no:cacheprovider $xdist $per_test --durations=25
  grep -E "FAILED|ERROR|crashed|Segmentation|Timeout" "$out/tests.log" | head -20
  tail -3 "$out/tests.log"

  # compute-sanitizer over each kernel at small sizes; each allocation its own (no caching).
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck initcheck; do
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 phase "sanitize $tool" $(( ${SANITIZE_S:-100} / 3 )) \
        "$out/sanitize_$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        python3 benches/sanitize_kernels.py
      grep -E "ERROR SUMMARY|error|every kernel ran" "$out/sanitize_$tool.log" | tail -3
    done
  else
    echo "compute-sanitizer: not on PATH"
  fi
fi

if wants bench; then
  NERFX_BENCH_DEVICES=cuda NERFX_BENCH_MD="$out/bench.md" phase bench "${BENCH_S:-200}" \
    "$out/bench.log" python3 -m pytest -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$out/bench.json" --durations=15 benches/bench_hashgrid.py \
    benches/bench_composite.py benches/bench_raymarch.py benches/bench_adam.py \
    benches/bench_train.py benches/bench_attention.py benches/bench_diffusion.py \
    benches/bench_ldm.py
  cat "$out/bench.md" 2>/dev/null || tail -30 "$out/bench.log"
fi

if wants train; then
  # The main job on the GPU (the checkpoint stays behind: it is too big to bring back).
  run=$(mktemp -d)/lego-fast
  NERFX_DATA=${NERFX_DATA:-$(mktemp -d)} phase train "${TRAIN_S:-240}" "$out/train.log" \
    python3 -m nerfx.train --scene lego --fast --out "$run" --video-frames 24 --profile-step 300
  tr '\r' '\n' <"$out/train.log" | grep -v '%|' | tail -8
  mkdir -p "$out/run"
  cp "$run/metrics.json" "$run/config.json" "$run"/turntable.* "$out/run/" 2>/dev/null
  cp $(ls "$run"/renders/test_*.png 2>/dev/null | head -3) "$out/run/" 2>/dev/null
  cp -r "$run/profile" "$out/run/" 2>/dev/null  # steps 300-302: trace, operators, host syncs
  cat "$out/run/profile/syncs.txt" 2>/dev/null; head -30 "$out/run/profile/ops.txt" 2>/dev/null
  python3 - "$run/metrics.json" <<'PY' 2>/dev/null | tee "$out/samples_per_ray.txt"
import json, sys
m = json.load(open(sys.argv[1]))
print("test PSNR at seconds:", m.get("test_psnr_at_seconds"))
print("samples per ray at step (trained):", m.get("samples_per_ray_at_step"))
print("samples per ray at step (marched, before compaction):", m.get("marched_per_ray_at_step"))
PY
fi
echo "gpu_check $what: $((SECONDS - start)) s, $([ $failed -eq 0 ] && echo ok || echo 'something failed')"
exit $failed
