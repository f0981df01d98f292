#!/usr/bin/env bash
# `pip install .` as people type it (pip's isolated build, which cannot see torch), in a fresh venv
# with the CPU build of torch: nerfx installs as pure Python, the first op compiles the kernels into
# a cache, a second process loads them from there, and the CPU op tests pass against the installed
# package (run from a folder that holds only the tests, so the checkout's nerfx is not imported).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NERFX_CACHE=$work/cache NERFX_FRESH_INSTALL=1   # this venv has no triton

python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q torch==2.13.0 pytest ninja build
git clone -q "$src" "$work/src"      # what is committed
# An sdist and a wheel build too (both without torch: the wheel is pure, the sources ride along).
python -m build -o "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
python -m zipfile -l "$work"/dist/nerfx-*.whl | grep "nerfx/_csrc/include/nerfx/hashgrid.h" >/dev/null
pip install -q "$work/src"
start=$SECONDS
(cd "$work" && python -m nerfx.info --build)
echo "first use: compiled in $((SECONDS - start)) s"
(cd "$work" && python - <<'PY'
import time
import nerfx._ext as ext
start = time.perf_counter()
ext.load()
info = ext.build_info()
print(f"second process: loaded from the cache in {time.perf_counter() - start:.2f} s ({info['how']})")
assert info["how"] == "compiled at first use", info
PY
)
mkdir "$work/run" && cp -r "$work/src/tests" "$work/run/"
(cd "$work/run" && python -m pytest -q -p no:cacheprovider tests/ops tests/test_build.py)
