"""Which earlier test makes a later one crash? Bisects the tests that ran before it (issue 22).

When a test crashes the process in the whole suite but not alone (benches/probe_op_errors.py's
verdict "nothing crashes in a fresh process"), the tests before it in that run are halved: each
try runs `pytest <a subset, in the original order> <target>` in a fresh process under a hard
limit; the half that still crashes is kept, until one test (or a set needing both halves) is left.
The tests before the target come from, in this order of preference:
  --from-log LOG   a `pytest -v` log of the crashing run (under xdist, --worker gw3 keeps the
                   crashing worker's tests; xdist's "[gw3] ... PASSED tests/...::..." lines);
  --before FILE    node ids one a line;
  otherwise        pytest's collection order of PATHS (default tests/), up to the target.
usage: python benches/bisect_test_order.py --target tests/ops/test_adam.py::test_x [--from-log
       LOG [--worker gwN] | --before FILE | PATHS...] [--limit S] [--budget S]
       python benches/bisect_test_order.py --self-test    (a planted crash, found on any machine)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r"((?:[\w./-]+\.py)::[^\s]+)")


def crashed(rc: int, text: str) -> bool:
    return rc < 0 or rc in (134, 135, 139) or "Fatal Python error" in text \
        or "Segmentation fault" in text


def ids_from_log(log: Path, target: str, worker: str | None) -> list[str]:
    ids: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        if worker and f"[{worker}]" not in line:
            continue
        found = NODE.search(line)
        if not found or found.group(1) in ids:
            continue
        if found.group(1) == target:
            break
        ids.append(found.group(1))
    return ids


def ids_collected(paths: list[str], target: str, cwd: Path, limit: float) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *paths], capture_output=True, text=True,
                          cwd=cwd, timeout=limit)
    ids = [ln.strip() for ln in done.stdout.splitlines() if "::" in ln]
    return ids[:ids.index(target)] if target in ids else ids


class Runner:
    def __init__(self, target: str, cwd: Path, limit: float, extra: list[str]):
        self.target, self.cwd, self.limit, self.extra, self.tries = target, cwd, limit, extra, 0

    def crashes(self, before: list[str]) -> bool:
        self.tries += 1
        cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "no:xdist", "-p", "no:randomly", *self.extra, *before, self.target]
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.cwd,
                                  timeout=self.limit)
            hit = crashed(done.returncode, done.stdout + done.stderr)
            how = f"rc {done.returncode}"
        except subprocess.TimeoutExpired:
            hit, how = False, f"timed out at {self.limit:.0f} s (counted as no crash)"
        print(f"  try {self.tries}: {len(before)} tests before the target -> "
              f"{'CRASH' if hit else 'no crash'} ({how}, {time.monotonic() - t0:.1f} s)",
              flush=True)
        return hit


def bisect(run: Runner, before: list[str], budget: float) -> list[str] | None:
    """-> the smallest set found that still crashes the target (None: the whole set does not)."""
    t0 = time.monotonic()
    if run.crashes([]):
        print("the target crashes ALONE in a fresh process: no order dependence to bisect")
        return []
    if not before or not run.crashes(before):
        print(f"no crash with the {len(before)} tests before it: the crash does not reproduce "
              "in this order (xdist's worker order? pass --from-log with --worker)")
        return None
    while len(before) > 1 and time.monotonic() - t0 < budget:
        half = len(before) // 2
        first, second = before[:half], before[half:]
        if run.crashes(first):
            before = first
        elif run.crashes(second):
            before = second
        else:
            print(f"neither half alone crashes: the crash needs tests from both "
                  f"({len(before)} left)")
            break
    else:
        if len(before) > 1:
            print(f"budget of {budget:.0f} s spent; {len(before)} tests left")
    return before


SELF_TEST = {
    "test_a_clean.py": "".join(f"def test_clean_{i}():\n    assert True\n\n\n" for i in range(9)),
    "test_b_poison.py": "import builtins\n\n\ndef test_harmless():\n    pass\n\n\n"
                        "def test_poisons():\n    builtins._nerfx_poisoned = True\n\n\n"
                        "def test_harmless_too():\n    pass\n",
    "test_c_target.py": "import builtins\nimport ctypes\n\n\ndef test_target():\n"
                        "    if getattr(builtins, '_nerfx_poisoned', False):\n"
                        "        ctypes.string_at(0)\n",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["tests"])
    parser.add_argument("--target")
    parser.add_argument("--from-log", type=Path)
    parser.add_argument("--worker", help="xdist worker of the crash, e.g. gw3")
    parser.add_argument("--before", type=Path)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds a try may run")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds in all")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--pytest-arg", action="append", default=[], dest="extra")
    args = parser.parse_args()
    cwd = ROOT
    if args.self_test:
        cwd = Path(tempfile.mkdtemp(prefix="nerfx-bisect-"))
        for name, text in SELF_TEST.items():
            (cwd / name).write_text(text)
        (cwd / "pytest.ini").write_text("[pytest]\n")
        args.target, args.paths = "test_c_target.py::test_target", ["."]
    if not args.target:
        parser.error("--target NODEID is needed")
    if args.from_log:
        before = ids_from_log(args.from_log, args.target, args.worker)
    elif args.before:
        before = [ln.strip() for ln in args.before.read_text().splitlines() if ln.strip()]
    else:
        before = ids_collected(args.paths, args.target, cwd, args.limit)
    print(f"target {args.target}; {len(before)} tests before it")
    found = bisect(Runner(args.target, cwd, args.limit, args.extra), before, args.budget)
    if found:
        print(f"RESULT: the target crashes after these {len(found)} test(s):")
        for node in found:
            print(f"  {node}")
    if args.self_test:
        ok = found == ["test_b_poison.py::test_poisons"]
        print(f"self-test: {'ok' if ok else 'FAILED'}")
        return int(not ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
