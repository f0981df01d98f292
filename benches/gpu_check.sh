#!/usr/bin/env bash
# The GPU check of issue 22, in two device calls; each phase stops at its budget and, as it ends,
# packs its log into OUT_DIR, so a call cut off still returns every phase before the cut.
# usage: benches/gpu_check.sh run1|run2|recheck OUT_DIR [--rehearse]
#   run1 (TOTAL_S=450; the call that must succeed), budgets in seconds (each also capped by what
#   is left of TOTAL_S; a phase with under 10 s left is skipped, and says so):
#     build 150   pip install -e . with the CUDA kernels for the visible card (-fmad=false); a
#                 warm machine keeps the build of the same sources. Usually under 60 s.
#     probe 45    benches/probe_op_errors.py: the crash probe (controls, the four ops, adam_step
#                 under inference_mode, test_adam.py alone in a fresh process), its VERDICT line
#     tests 160   the CUDA tests: one `pytest -n 8 -k "cuda or libstdcxx" tests` (pytest-xdist, on
#                 the GPU image; else one process per file, 4 at once), OMP_NUM_THREADS=2, so a
#                 crash costs one test; peak GPU memory by test
#     memcheck 40, initcheck 40   compute-sanitizer on benches/sanitize_kernels.py, filtered to
#                 nerfx's kernels (--kernel-name kns=nerfx)
#     attention 45  compute-sanitizer racecheck on benches/sanitize_attention.py (Triton kernels:
#                 shared memory), filtered to their names
#     bench (the rest)  the kernels' CUDA and Triton rows, fwd+bwd, at the issue's sizes (hash
#                 grid 2^20 points, compositing 2^18 x 64 beside a copy, march 2^18 rays)
#   run2 (TOTAL_S=300; only when run 1 left >= 5 minutes): build (kept when warm); the peers from
#     .whl (benches/fetch_peer_wheels.sh; carry `.whl`); nerfacc's first-use CUDA build, 90 s at
#     most, its rows left out if it fails; the scene: the built-in lego at 400 px (the gpu-fast
#     preset's size) generated on the GPU, 60 s; the remaining benchmarks beside the peers, the
#     references and torch.compile (their time capped so the main job keeps 170 s); the main
#     job `python -m nerfx.train --scene lego --fast` with its peak GPU memory.
#   recheck (TOTAL_S=320; after a run 1 that found faults, on a fresh machine): build; the
#     extension's linkage (readelf NEEDED, libstdc++ symbols it defines); the probe; the CUDA
#     tests as in run1; initcheck on the hash grid alone, with its tensors' addresses; the
#     kernels' rows as in run1.
#   Not in either run yet: the -fmad=false before/after bench row (build the parent of the commit
#   that added the flag in a second tree and run bench_hashgrid/bench_composite -k cuda from both).
#   --rehearse (or REHEARSE=1): the same phases on the CPU with tiny sizes and the same output
#   layout, no build (the CPU extension in place), no compute-sanitizer (the scripts run bare on
#   CPU tensors): a script error must never cost GPU time.
#   OUT_DIR receives summary.txt (a line a phase, the key results), logs.tar.gz (every phase's
#   log, re-packed as each phase ends) and, while a phase runs, current.log: 3 files at most.
#   Environment: TOTAL_S; BUDGET_SCALE (every budget times this: 4 in rehearsal, else 1);
#   NERFX_COMMIT (the commit, where the tree has no .git).
set -uo pipefail
usage="usage: benches/gpu_check.sh run1|run2|recheck OUT_DIR [--rehearse]"
mode=${1:?$usage}
out=$(realpath -m "${2:?$usage}")
[ "${3:-}" = --rehearse ] && REHEARSE=1
rehearse=${REHEARSE:-0}
case $mode in run1) total=${TOTAL_S:-450} ;; run2) total=${TOTAL_S:-300} ;;
  recheck) total=${TOTAL_S:-320} ;; *) echo "unknown mode $mode (run1, run2 or recheck)"; exit 2 ;;
esac
# The 2-core development machine is slower than the GPU machine's 16 cores at the same steps:
# the rehearsal stretches every budget (BUDGET_SCALE, default 4 there, 1 on the GPU).
scale=${BUDGET_SCALE:-$([ "$rehearse" = 1 ] && echo 4 || echo 1)}
total=$((total * scale))
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
work=$(mktemp -d /tmp/gpu_check.XXXXXX)
start=$SECONDS
failed=0

note() { echo "$*" | tee -a "$out/summary.txt"; }
left() { echo $((total - (SECONDS - start))); }
pack() {  # every finished phase's log into OUT_DIR/logs.tar.gz (atomically: rename in place)
  tar -czf "$out/.logs.tar.gz.part" -C "$work" . 2>/dev/null
  if [ "$(stat -c %s "$out/.logs.tar.gz.part" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    # A file over 16 MiB does not come back: the profile's trace and the video go first.
    tar -czf "$out/.logs.tar.gz.part" -C "$work" --exclude=trace.json --exclude='*.mp4' .
  fi
  mv -f "$out/.logs.tar.gz.part" "$out/logs.tar.gz"
}
# phase NAME BUDGET COMMAND...: runs COMMAND into OUT_DIR/current.log for at most BUDGET seconds
# (and what is left of TOTAL_S), SIGINT first (pytest still writes its summary); then the log
# moves to NAME.log in the tarball and one line goes to summary.txt.
phase() {
  local name=$1 budget=$(($2 * scale)) rc t0=$SECONDS
  shift 2
  local cap=$(($(left) - 5))
  [ "$budget" -gt "$cap" ] && budget=$cap
  if [ "$budget" -lt 10 ]; then
    note "$name: SKIPPED, ${cap}s left of ${total}s"; return 99
  fi
  if declare -F "$1" >/dev/null; then  # a function of this script (exported): in a child bash
    export -f "$1"
    timeout -s INT -k 15 "$budget" bash -c '"$@"' _ "$@" >"$out/current.log" 2>&1
  else
    timeout -s INT -k 15 "$budget" "$@" >"$out/current.log" 2>&1
  fi
  rc=$?
  mv -f "$out/current.log" "$work/$name.log"
  [ $rc -ne 0 ] && failed=1
  note "$name: rc=$rc$([ $rc -eq 124 ] && echo " (stopped at its budget, ${budget}s)"), \
$((SECONDS - t0))s (total $((SECONDS - start))s of ${total}s)"
  pack
  return $rc
}

{ echo "gpu_check $mode$([ "$rehearse" = 1 ] && echo ' REHEARSAL (CPU)'), $(date -u)"
  # NERFX_COMMIT first: the device's copy of the tree can carry a stale .git
  echo "commit: ${NERFX_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | \
    tail -n +2 || true
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.is_available())'; } >"$out/summary.txt" 2>&1
cat "$out/summary.txt"
export rehearse work PATH=$PATH:/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer
if [ "$rehearse" = 1 ]; then
  dev=cpu; export OMP_NUM_THREADS=1 NERFX_BENCH_ROUNDS=1 TRITON_INTERPRET=1
else
  dev=cuda; export OMP_NUM_THREADS=2 MAX_JOBS=${MAX_JOBS:-16} NERFX_BUILD_CUDA=1
  # The card's architecture only (no GPU to ask: the build fails, and says so).
  TORCH_CUDA_ARCH_LIST=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST
fi

toolchain() {  # which compiler links nerfx._C, and which libstdc++ it would link
  type -a c++ g++ 2>&1 | head -4; c++ --version 2>&1 | head -1
  echo "c++ -print-file-name: libstdc++.so=$(c++ -print-file-name=libstdc++.so)" \
    "libstdc++.a=$(c++ -print-file-name=libstdc++.a)"
  python3 -c 'import sysconfig as s; print("LDSHARED", s.get_config_var("LDSHARED"))'
  echo "CXX=${CXX:-} LDFLAGS=${LDFLAGS:-}"
}
export -f toolchain  # build() runs in a child bash and calls it
linkage() {  # the built extension's libstdc++: shared (NEEDED) and no copy of its own inside
  local so
  so=$(python3 -c 'from nerfx import _ext; print(_ext.load().__file__)') || return 1
  readelf -d "$so" | grep NEEDED
  echo "std::locale symbols defined inside: $(nm -D --defined-only "$so" | grep -c _ZNSt6locale)"
  [ "$(nm -D --defined-only "$so" | grep -c _ZNSt6locale)" = 0 ]
}
build() {  # the CUDA build for the visible card, kept between calls on a warm machine
  local digest stamp=build/gpu_check.digest
  toolchain
  digest=$(python3 -c 'from pathlib import Path; from nerfx import _build
print(_build.sources_digest(Path("csrc")))')
  if [ -f nerfx/_C.build.json ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ] && python3 -c \
      'from nerfx import _ext; _ext.load(); assert _ext.build_info()["cuda"]' 2>/dev/null; then
    echo "build: kept from the previous call (sources digest $digest)"
  else
    python3 -m pip install --no-build-isolation --no-deps -e . || {
      echo "pip install failed; building in place"; python3 setup.py build_ext --inplace; } || return 1
    mkdir -p build && echo "$digest" >"$stamp"
  fi
  python3 -m nerfx.info
}
if [ "$rehearse" = 1 ]; then
  phase build 150 python3 -m nerfx.info  # the CPU extension in place; nothing is built
else
  phase build 150 build || { note "build FAILED: nothing else can run"; tail -30 "$work/build.log"
                             pack; exit 1; }
fi
grep -E "^(backend|auto|cuda|built)|CUDA" "$work/build.log" | head -8

if [ "$mode" = run1 ] || [ "$mode" = recheck ]; then
  if [ "$mode" = recheck ]; then
    phase linkage 20 linkage
    grep -E "NEEDED|defined inside" "$work/linkage.log" | tee -a "$out/summary.txt"
  fi
  # --- the crash probe: controls, each op, inference_mode, test_adam.py alone ------------------
  phase probe 45 python3 benches/probe_op_errors.py --jobs "$([ "$rehearse" = 1 ] && echo 2 || echo 8)" \
    --limit 30
  grep -E "CRASHED|TIMED OUT|SKIPPED|VERDICT|fresh process" "$work/probe.log" | tee -a "$out/summary.txt"

  # --- the CUDA tests, CUDA first ---------------------------------------------------------------
  export NERFX_PEAK_MEMORY_LOG=$work/peak_memory
  cuda_tests() {
    local files
    deadline=$(($(date +%s) + $1))
    # pytest-timeout (on the GPU image): a hung test costs 90 s, not the phase.
    python3 -c 'import pytest_timeout' 2>/dev/null && export PYTEST_ADDOPTS="--timeout 90"
    if python3 -c 'import xdist' 2>/dev/null; then  # the GPU image has it: one run, 8 workers
      python3 -X faulthandler -m pytest -v -n 8 -p no:cacheprovider -rfEs --durations=10 \
        -k "cuda or libstdcxx" tests
      return 0
    fi
    echo "no pytest-xdist: one pytest process a file, 4 at once"
    files=$(python3 -m pytest --collect-only -q -p no:cacheprovider -k cuda tests 2>/dev/null | \
      grep '::' | cut -d: -f1 | sort -u | grep -v test_at_scale)
    echo "files with -k cuda tests: $(echo "$files" | wc -w)"
    mkdir -p "$work/tests"
    export -f one_file; export deadline work
    printf '%s\n' tests/ops/test_at_scale.py $files | xargs -P 4 -n 1 bash -c 'one_file "$1"' _
    for f in "$work"/tests/*.log; do echo "=== $f"; cat "$f"; done
  }
  one_file() {  # pytest on one file (test_at_scale whole, the others -k cuda), within the deadline
    local f=$1 k=(-k cuda) log rc now
    [ "$f" = tests/ops/test_at_scale.py ] && k=()
    now=$(date +%s)
    if [ $((deadline - now)) -lt 5 ]; then echo "RESULT $f SKIPPED: the phase's time is up"; return; fi
    log=$work/tests/$(echo "$f" | tr / _).log
    timeout -s INT -k 10 $((deadline - now)) python3 -X faulthandler -m pytest -v \
      -p no:cacheprovider -rfEs --durations=5 "${k[@]}" "$f" >"$log" 2>&1
    rc=$?
    echo "RESULT $f rc=$rc: $(grep -E '(passed|failed|skipped|error|no tests ran)' "$log" | tail -1)"
  }
  export -f one_file
  phase tests 160 cuda_tests $((150 * scale))
  grep -E "^RESULT|^(FAILED|ERROR) |Fatal Python|Segmentation|node down|crashed worker" \
    "$work/tests.log" | head -40 | \
    tee -a "$out/summary.txt"
  grep -hE "^=+ .*(passed|failed|error|skipped).* in [0-9.]+s.* =+$" "$work/tests.log" | \
    awk '{gsub(/,/, ""); for (i = 2; i <= NF; i++) if ($i ~ /^(passed|failed|skipped|errors?|deselected)$/) \
      s[$i] += $(i - 1)} END {for (k in s) printf "%s %d  ", k, s[k]; print ""}' | \
    sed 's/^/tests total: /' | tee -a "$out/summary.txt"
  cat "$NERFX_PEAK_MEMORY_LOG".* 2>/dev/null | sort -rn | head -15 | \
    awk -F'\t' '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}' >"$work/peak_memory.txt"
  [ -s "$work/peak_memory.txt" ] || echo "no CUDA test recorded a peak (no CUDA)" \
    >"$work/peak_memory.txt"
  { echo "peak GPU memory, largest tests:"; head -5 "$work/peak_memory.txt"; } | \
    tee -a "$out/summary.txt"
  unset NERFX_PEAK_MEMORY_LOG
  pack

  # --- compute-sanitizer, filtered to nerfx's kernels; the Triton attention kernels ------------
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  san() {  # san TOOL SCRIPT FILTER...: the script under the tool (bare on the CPU in rehearsal)
    local tool=$1 script=$2
    shift 2
    local cmd=(compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit
               "${SAN_PRINT_LIMIT:-20}" "$@")
    if [ "$rehearse" = 1 ]; then  # SCRIPT may hold its arguments: split on purpose
      echo "rehearsal: would run: ${cmd[*]} python3 $script"
      python3 $script --device cpu
    else
      "${cmd[@]}" python3 $script
    fi
  }
  if [ "$rehearse" = 0 ] && ! command -v compute-sanitizer >/dev/null; then
    note "compute-sanitizer: not on PATH nor in /usr/local/cuda: the sanitizer phases fail"
  fi
  attn_filter=(--kernel-name kns=_kernel)
  if [ "$rehearse" = 0 ] && compute-sanitizer --help 2>&1 | grep -q -- --kernel-regex; then
    attn_filter=(--kernel-regex 'kns=_(forward|delta|backward)_kernel')
  fi
  if [ "$mode" = recheck ]; then  # the hash grid's forward, the one kernel initcheck flagged
    SAN_PRINT_LIMIT=3 phase sanitize_initcheck_hash 30 san initcheck \
      "benches/sanitize_kernels.py --only hash_encode" --kernel-name kns=nerfx
    grep -E "ERROR SUMMARY|every kernel ran|Address|at void|^x |^out " \
      "$work/sanitize_initcheck_hash.log" | head -12 | tee -a "$out/summary.txt"
  fi
  for tool in $([ "$mode" = run1 ] && echo memcheck initcheck); do
    phase "sanitize_$tool" 40 san "$tool" benches/sanitize_kernels.py --kernel-name kns=nerfx
    grep -E "ERROR SUMMARY|every kernel ran|Error|error:" "$work/sanitize_$tool.log" | tail -3 | \
      sed "s/^/$tool: /" | tee -a "$out/summary.txt"
  done
  [ "$mode" = run1 ] && phase sanitize_attention_racecheck 45 san racecheck benches/sanitize_attention.py \
    "${attn_filter[@]}"
  [ "$mode" = run1 ] && grep -E "RACECHECK SUMMARY|ERROR SUMMARY|every kernel ran|Error" \
    "$work/sanitize_attention_racecheck.log" | tail -3 | sed "s/^/attention racecheck: /" | \
    tee -a "$out/summary.txt"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING

  # --- as time allows: the three NeRF kernels' rows on this device ------------------------------
  if [ "$rehearse" = 1 ]; then k="(fwd+bwd and cpu-cpu) or (march_rays and cpu-cpu)"
  else  # the kernels at the issue's sizes, the copy beside them (references: run 2)
    k="19-20-fwd+bwd-cuda-cuda or 19-20-fwd+bwd-triton-cuda or fwd+bwd-cuda-cuda or"
    k="$k fwd+bwd-triton-cuda or fwd+bwd-copy-cuda or fwd+bwd-cuda+fp16-rgbs-cuda or"
    k="$k fwd+bwd-triton+fp16-rgbs-cuda or march_rays[cuda-cuda]"
  fi
  NERFX_BENCH_DEVICES=$dev NERFX_BENCH_MD=$work/bench.md phase bench 200 \
    python3 -m pytest -q -p no:cacheprovider --benchmark-only -k "$k" \
    --benchmark-json="$work/bench.json" benches/bench_hashgrid.py benches/bench_raymarch.py \
    benches/bench_composite.py
  { cat "$work/bench.md" 2>/dev/null || tail -5 "$work/bench.log"; } | tee -a "$out/summary.txt"
fi

if [ "$mode" = run2 ]; then
  # --- the peers (not on the machine): from .whl, carried by the call -------------------------
  if ls .whl/*.whl >/dev/null 2>&1; then
    # The wheels this Python can install (the GPU machine's 3.12 takes them all).
    pv=$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
    mapfile -t whls < <(ls .whl/*.whl | grep -E -- "-py3-none-|-cp$pv-")
    [ "${#whls[@]}" -lt "$(ls .whl/*.whl | wc -l)" ] && note "peers: not for python $pv:" \
      "$(ls .whl/*.whl | grep -vE -- "-py3-none-|-cp$pv-" | tr '\n' ' ')"
    phase peers 30 python3 -m pip install --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/peers "${whls[@]}" && export PYTHONPATH=$PYTHONPATH:/tmp/peers
  else
    note "peers: no .whl in the tree (run benches/fetch_peer_wheels.sh and carry .whl)"
  fi
  # nerfacc builds its CUDA code at first use (about 40 s; may fail with CUDA 13): at most 90 s
  # here, and its rows are left out unless it built.
  not_nerfacc="and not nerfacc"
  if [ "$rehearse" = 1 ]; then
    note "nerfacc: rehearsal, its CUDA build is not tried; rows left out"
  elif phase nerfacc_build 90 python3 -c 'from nerfacc.cuda._backend import _C
assert _C is not None, "nerfacc: no CUDA module (no nvcc on PATH?)"; print("built", _C)'
  then not_nerfacc=""
  else note "nerfacc: did not build (nerfacc_build.log); its rows are left out"
  fi
  # The scene: the gpu-fast preset trains at 400 px (downscale 2); generated on the GPU, where
  # 64M rays take seconds (on this machine's CPU, minutes of the budget).
  export NERFX_DATA=${work}_data  # beside the logs, not in them (the 400 px scene is large)
  size=$([ "$rehearse" = 1 ] && echo 25 || echo 400)
  train_size=()
  phase scene 60 python3 -c "import time, torch; from nerfx.data import lego; t = time.time()
print(lego.generate($size, progress=False), 'on', 'cuda' if torch.cuda.is_available() else 'cpu',
      f'in {time.time() - t:.1f} s')" || train_size=(--downscale 8)
  [ ${#train_size[@]} -gt 0 ] && note "scene: not generated; the main job trains at the CPU" \
    "preset's 100 px instead (--downscale 8)"
  [ "$rehearse" = 1 ] && train_size=(--downscale 32 --steps 30 --max-seconds 20 --eval-views 2)
  # The remaining benchmarks beside the peers, capped so that the main job keeps 170 s.
  if [ "$rehearse" = 1 ]; then
    k="(march_rays and torch-cpu) or (adam and cpu)"; files=(benches/bench_raymarch.py
      benches/bench_adam.py)
  else
    k="(nerfacc $not_nerfacc) or attention or adam or train or diffusion or ldm or fwd- or"
    # + every compositing row, the hash grid's at 2^20 points, the references and torch.compile
    k="$k composite_rays or 19-20-fwd+bwd or fwd+bwd-torch or march_rays"
    files=(benches/bench_attention.py benches/bench_raymarch.py benches/bench_composite.py
      benches/bench_hashgrid.py benches/bench_adam.py benches/bench_train.py
      benches/bench_diffusion.py benches/bench_ldm.py)
  fi
  NERFX_BENCH_DEVICES=$dev NERFX_BENCH_MD=$work/bench.md phase bench $((($(left) - 170 * scale) / scale)) \
    python3 -m pytest -q -p no:cacheprovider --benchmark-only -k "$k" \
    --benchmark-json="$work/bench.json" "${files[@]}"
  { cat "$work/bench.md" 2>/dev/null || tail -5 "$work/bench.log"; } | tee -a "$out/summary.txt"
  # The main job, and its peak GPU memory (the checkpoint stays behind: too big to bring back).
  run=$work/run  # what comes back; the run folder itself (checkpoint included) stays beside
  phase train 165 python3 benches/peak_memory.py nerfx.train --scene lego --fast --out "${work}_run" \
    --video-frames 24 --profile-step "$([ "$rehearse" = 1 ] && echo 10 || echo 300)" \
    "${train_size[@]}"
  mkdir -p "$run"
  cp "${work}_run/metrics.json" "${work}_run/config.json" "${work}_run"/turntable.* "$run/" \
    2>/dev/null
  find "${work}_run/renders" -name 'test_*.png' 2>/dev/null | sort | head -3 | \
    xargs -r cp -t "$run/"
  cp -r "${work}_run/profile" "$run/" 2>/dev/null  # a few profiled steps: trace, operators, syncs
  rm -rf "${work}_run" "${work}_data"
  tr '\r' '\n' <"$work/train.log" | grep -E "PSNR|peak GPU memory|nerfx:" | tail -6 | \
    tee -a "$out/summary.txt"
  python3 - "$run/metrics.json" <<'PY' 2>&1 | tee -a "$out/summary.txt"
import json, sys
m = json.load(open(sys.argv[1]))
print("test PSNR at seconds:", m.get("test_psnr_at_seconds"))
print("samples per ray at step (trained):", m.get("samples_per_ray_at_step"))
PY
  pack
fi
rm -f "$out/.logs.tar.gz.part"
note "gpu_check $mode: $((SECONDS - start))s, $([ $failed -eq 0 ] && echo ok || echo 'something failed')"
exit $failed
