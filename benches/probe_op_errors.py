"""Why did test_adam.py crash on the GPU machine? One run decides (issue 22).

A failing TORCH_CHECK must raise RuntimeError; a GPU machine's CUDA build was seen to crash
instead (benches/RESULTS.md, GPU). Every case below runs in its own process, in parallel, each
under a hard time limit:
  - control: libtorch's own C++ check (`torch.ones(2) + torch.ones(3)`), nerfx not loaded and
    loaded, before and after CUDA is initialised, on CPU and CUDA tensors;
  - a nerfx op raising from each of the four ops (adam_step twice, hash_encode, composite_rays,
    march_rays), and adam_step under torch.inference_mode() (no in-place fallbacks);
  - `pytest tests/ops/test_adam.py` in a fresh process.
Then the linkage: LD_PRELOAD, the `_Unwind_*` / `__gxx_personality_v0` / `__cxa_throw` that
nerfx._C and libc10 import (nm -D --undefined-only) and the libraries the loader binds them to
(LD_DEBUG=bindings with LD_BIND_NOW=1). Each case that crashes runs again with a SIGSEGV/SIGABRT
handler compiled here with `cc` and LD_PRELOADed (backtrace_symbols_fd: the native frames) and
TORCH_SHOW_CPP_STACKTRACES=1. The last line is the verdict:
  control crashes too          -> the environment is at fault (the tests must not depend on it);
  only nerfx crashes           -> nerfx's linkage (the bindings above say which unwinder);
  nothing crashes here         -> the crash needs the tests before it: benches/bisect_test_order.py.
Without a CUDA device the CUDA states are skipped with a line saying so (the CPU rehearsal).
usage: python benches/probe_op_errors.py [--jobs N] [--limit SECONDS]   exit 1 if any crashed
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import faulthandler, sys, torch
faulthandler.enable()
dev, state, load = sys.argv[1], sys.argv[2], sys.argv[3] == "nerfx"
if load:
    from nerfx import _ext
    _ext.load()
if state == "cuda-initialised":
    torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
"""

# name -> (code that must raise RuntimeError from C++, whether it loads nerfx._C)
CASES: dict[str, tuple[str, bool]] = {
    "control, nerfx not loaded": ("torch.ones(2, device=dev) + torch.ones(3, device=dev)", False),
    "control, nerfx loaded": ("torch.ones(2, device=dev) + torch.ones(3, device=dev)", True),
    "adam_step, step int64": ("""
p = torch.zeros(8, device=dev); s = torch.zeros(8, dtype=torch.int64, device=dev)
torch.ops.nerfx.adam_step(p, torch.ones(8, device=dev), torch.zeros(8, device=dev),
                          torch.zeros(8, device=dev), s, 1e-2, 0.9, 0.99, 1e-15)""", True),
    "adam_step, grad shape 7": ("""
p = torch.zeros(8, device=dev); s = torch.zeros(8, dtype=torch.int32, device=dev)
torch.ops.nerfx.adam_step(p, torch.ones(7, device=dev), torch.zeros(8, device=dev),
                          torch.zeros(8, device=dev), s, 1e-2, 0.9, 0.99, 1e-15)""", True),
    "adam_step, inference_mode": ("""
p = torch.zeros(8, device=dev); s = torch.zeros(8, dtype=torch.int64, device=dev)
with torch.inference_mode():
    torch.ops.nerfx.adam_step(p, torch.ones(8, device=dev), torch.zeros(8, device=dev),
                              torch.zeros(8, device=dev), s, 1e-2, 0.9, 0.99, 1e-15)""", True),
    "hash_encode, x of 4 columns": ("""
torch.ops.nerfx.hash_encode(torch.zeros(5, 4, device=dev), torch.zeros(16, 2, device=dev),
                            [0, 16], [2], 2)""", True),
    "composite_rays, offsets float": ("""
z = torch.zeros(4, device=dev)
torch.ops.nerfx.composite_rays(z, torch.zeros(4, 3, device=dev), z, z, z, 1e-4)""", True),
    "march_rays, rays_o of 2 columns": ("""
z = torch.zeros(4, device=dev)
torch.ops.nerfx.march_rays(torch.zeros(4, 2, device=dev), torch.ones(4, 3, device=dev), z, z + 1,
                           z, torch.zeros(64, dtype=torch.uint8, device=dev), [0.0, 0.0, 0.0],
                           [1.0, 1.0, 1.0], 8, 1, 0.01, 0.0, 0)""", True),
}
PYTEST_ADAM = "pytest tests/ops/test_adam.py (fresh process)"
# --rehearse-crash: a deliberate crash, to rehearse the backtrace path (left out of the verdict).
REHEARSAL = "rehearsal, deliberate SIGSEGV"

HANDLER_C = r"""
#include <execinfo.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_fatal(int sig) {
  void* frames[128];
  const char* head = "\n=== native backtrace (LD_PRELOADed handler), signal ";
  write(2, head, strlen(head));
  const char* name = sig == SIGSEGV ? "SIGSEGV ===\n" : sig == SIGABRT ? "SIGABRT ===\n"
                     : sig == SIGBUS ? "SIGBUS ===\n" : "SIGILL/SIGFPE ===\n";
  write(2, name, strlen(name));
  int n = backtrace(frames, 128);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}
__attribute__((constructor)) static void install(void) {
  static char stack[1 << 16];
  stack_t ss = {0};
  ss.ss_sp = stack; ss.ss_size = sizeof stack;
  sigaltstack(&ss, 0);
  int sigs[] = {SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE};
  for (unsigned i = 0; i < sizeof sigs / sizeof *sigs; ++i) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_ONSTACK;
    sigaction(sigs[i], &sa, 0);
  }
}
"""


def crashed(rc: int, text: str) -> bool:
    return rc < 0 or rc in (128 + 6, 128 + 11, 128 + 7) or "Segmentation fault" in text \
        or "Fatal Python error" in text


def run_case(case: str, device: str, state: str, limit: float, env: dict | None = None
             ) -> tuple[str, str]:
    """-> (result line, the process's whole output)."""
    if case == PYTEST_ADAM:
        cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "no:xdist", "tests/ops/test_adam.py"]
    else:
        code, load = CASES[case]
        cmd = [sys.executable, "-c", PRELUDE + code + "\nprint('NO ERROR RAISED')", device, state,
               "nerfx" if load else "-"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT,
                              env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace") if isinstance(e.stdout, bytes) else f"{e.stdout}{e.stderr}"
        return f"TIMED OUT after {limit:.0f} s", out
    text = proc.stdout + proc.stderr
    took = f"{time.monotonic() - t0:.1f} s"
    if crashed(proc.returncode, text):
        return f"CRASHED (rc {proc.returncode}, {took})", text
    if case == PYTEST_ADAM:
        tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:]
        verdict = "passed" if proc.returncode == 0 else f"FAILED rc {proc.returncode}"
        return f"{verdict}: {tail[0][:100] if tail else ''} ({took})", text
    if "RuntimeError" in proc.stderr:
        last = proc.stderr.strip().splitlines()[-1]
        return f"raised RuntimeError ({took}): {last[:110]}", text
    return f"rc {proc.returncode} ({took}): {text.strip()[-200:]}", text


def compile_handler(workdir: Path) -> str | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("backtrace handler: no cc on PATH")
        return None
    src, lib = workdir / "segv_backtrace.c", workdir / "segv_backtrace.so"
    src.write_text(HANDLER_C)
    done = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)],
                          capture_output=True, text=True)
    if done.returncode:
        print(f"backtrace handler: {cc} failed: {done.stderr[-400:]}")
        return None
    return str(lib)


def linkage_report(limit: float) -> None:
    """Which unwinder and personality routine nerfx._C and libc10 import, and where from."""
    print(f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}  "
          f"TORCH_SHOW_CPP_STACKTRACES={os.environ.get('TORCH_SHOW_CPP_STACKTRACES', '')!r}")
    find = ("import os, torch; from nerfx import _ext; print(_ext.load().__file__); "
            "print(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libc10.so'))")
    libs = subprocess.run([sys.executable, "-c", find], capture_output=True, text=True, cwd=ROOT,
                          timeout=limit).stdout.split()
    wanted = ("_Unwind_", "__gxx_personality_v0", "__cxa_throw")
    for lib in libs:
        nm = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True,
                            text=True) if shutil.which("nm") else None
        names = sorted({ln.split()[-1] for ln in (nm.stdout if nm else "").splitlines()
                        if any(w in ln for w in wanted)})
        print(f"{Path(lib).name} imports: {' '.join(names) or '(nm missing or none)'}")
        ldd = subprocess.run(["ldd", lib], capture_output=True, text=True) \
            if shutil.which("ldd") else None
        for ln in (ldd.stdout if ldd else "").splitlines():
            if any(k in ln for k in ("libgcc_s", "libstdc++", "libunwind", "libc10.so",
                                     "libtorch_cpu", "libcudart")):
                print(f"  ldd: {ln.strip()}")
    env = dict(os.environ, LD_DEBUG="bindings", LD_BIND_NOW="1")
    load = "import torch; from nerfx import _ext; _ext.load()"
    try:
        done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=limit)
        lines = [ln.split(":", 1)[-1].strip() for ln in done.stderr.splitlines()
                 if "binding file" in ln and any(w in ln for w in wanted)
                 and ("_C" in ln.split(" to ")[0] or "libc10.so" in ln.split(" to ")[0])]
        for ln in sorted(set(lines))[:24]:
            print(f"  bound: {ln}")
        if not lines:
            print("  bound: (no LD_DEBUG binding lines for these symbols)")
    except subprocess.TimeoutExpired:
        print(f"  bound: LD_DEBUG=bindings run timed out after {limit:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a case may run")
    parser.add_argument("--no-pytest", action="store_true", help="leave test_adam.py out")
    parser.add_argument("--only", default="", help="only the cases whose name has this text")
    parser.add_argument("--rehearse-crash", action="store_true",
                        help="add a deliberate SIGSEGV case (rehearses the backtrace path)")
    args = parser.parse_args()
    import torch

    t0 = time.monotonic()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}"
          f", {args.jobs} parallel, {args.limit:.0f} s a case")
    combos = [("cpu", "cuda-untouched")]
    if torch.cuda.is_available():
        combos += [("cpu", "cuda-initialised"), ("cuda", "cuda-initialised")]
    else:
        print("CUDA states SKIPPED: torch.cuda.is_available() is False (CPU rehearsal); only "
              "CPU tensors with CUDA untouched run")
    if args.rehearse_crash:
        CASES[REHEARSAL] = ("import ctypes; ctypes.string_at(0)", False)
    jobs = [(c, d, s) for d, s in combos for c in CASES
            if (c != REHEARSAL or d == "cpu") and args.only in c]
    if not args.no_pytest:
        jobs.append((PYTEST_ADAM, "-", "fresh"))
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:  # each line printed as its case ends
        futures = {pool.submit(run_case, *job, limit=args.limit): job for job in jobs}
        for future in as_completed(futures):
            (case, device, state), (line, text) = futures[future], future.result()
            results.append((futures[future], line, text))
            print(f"{case:34s} {device:4s} {state:16s} {line}", flush=True)
    print(f"-- linkage ({time.monotonic() - t0:.0f} s so far)")
    linkage_report(args.limit)

    bad = [(job, text) for job, line, text in results if line.startswith("CRASHED")]
    real = [(job, text) for job, text in bad if job[0] != REHEARSAL]
    if bad:
        work = Path(tempfile.mkdtemp(prefix="nerfx-probe-"))
        handler = compile_handler(work)
        for (case, device, state), text in bad:
            print(f"\n== {case} / {device} / {state}: the crash's output (last 3000 chars)")
            print(text[-3000:])
            env = dict(os.environ, TORCH_SHOW_CPP_STACKTRACES="1")
            if handler:
                env["LD_PRELOAD"] = ":".join(filter(None, [handler, env.get("LD_PRELOAD")]))
            print(f"== again with LD_PRELOAD={env.get('LD_PRELOAD', '')} "
                  "TORCH_SHOW_CPP_STACKTRACES=1")
            line, text2 = run_case(case, device, state, args.limit, env)
            print(line)
            print(text2[-6000:])
    timed_out = [job for job, line, _ in results if line.startswith("TIMED OUT")]
    ctrl = [job for job, _ in real if job[0].startswith("control")]
    ops = [job for job, _ in real if not job[0].startswith("control") and job[0] != PYTEST_ADAM]
    print(f"\n-- {len(results)} cases, {len(bad)} crashed, {len(timed_out)} timed out, "
          f"{time.monotonic() - t0:.0f} s")
    if ctrl:
        print("VERDICT: the libtorch control crashes too -> the ENVIRONMENT is at fault (C++ "
              "exceptions crash in this process state); the tests must not depend on it")
    elif ops:
        print("VERDICT: only nerfx's ops crash -> nerfx's LINKAGE (see the bindings above: which "
              "_Unwind_*/__gxx_personality_v0 nerfx._C gets vs libc10's, and whether it holds a "
              "libstdc++ of its own: on 2026-12-04 a static one crashed every message printing "
              "a number)")
    elif any(job[0] == PYTEST_ADAM for job, _ in real):
        print("VERDICT: every op raises alone, but test_adam.py crashes alone in a fresh process "
              "-> the crash is inside test_adam.py's own sequence (see its output above)")
    else:
        print("VERDICT: nothing crashes in a fresh process (every case raised, test_adam.py "
              "passed); if the test suite still crashes, the crash needs the tests that ran "
              "before it: python benches/bisect_test_order.py --target <the crashed test>")
    if timed_out:
        print("timed out (no verdict from these): " + "; ".join(" / ".join(j) for j in timed_out))
    return int(bool(real))


if __name__ == "__main__":
    sys.exit(main())
