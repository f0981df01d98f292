"""The processes nerfx starts itself for data-parallel CPU training: how many, how they meet,
what happens when one fails (the training math under several processes: tests/trainers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from nerfx import distributed, threads, train


def test_the_process_count_follows_the_setting_and_the_free_cores(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "free_cores", lambda: 5)
    assert distributed.local_processes(None, "cpu", None) == 1
    assert distributed.local_processes(1, "cpu", None) == 1
    assert distributed.local_processes(3, "cpu", None) == 3
    assert distributed.local_processes("auto", "cpu", None) == 5      # one thread each
    assert distributed.local_processes("auto", "cpu", 2) == 2         # 5 cores // 2 threads
    assert distributed.local_processes("auto", "cpu", 8) == 1
    assert distributed.local_processes("auto", "cuda", None) == 1      # CPUs only
    assert distributed.local_processes(4, "cuda", None) == 1
    for bad in (0, -2, "two", 2.5, True):
        with pytest.raises(ValueError, match="processes"):
            distributed.local_processes(bad, "cpu", None)
    monkeypatch.setenv("WORLD_SIZE", "2")                     # torchrun started this one
    assert distributed.local_processes("auto", "cpu", None) == 1


def test_free_cores_average_the_other_processes_runnable_threads(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    busy = iter([1, 2, 2, 3])
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: next(busy))
    assert threads.free_cores(readings=4, interval=0.0) == 2            # 4 - mean 2
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: 9)
    assert threads.free_cores(readings=2, interval=0.0) == 1            # never below one
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: None)    # no /proc
    assert threads.free_cores() == 4


def test_the_processes_option_takes_a_count_or_auto(capsys):
    assert train.parse_args(["--processes", "auto"]).processes == "auto"
    assert train.parse_args(["--processes", "3"]).processes == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            train.parse_args(["--processes", bad])
        assert "a count of processes" in capsys.readouterr().err


def reduce_and_report(path: str, local: distributed.LocalGroup) -> None:
    """A worker: joins the group, adds its rank + 1 to the sum, writes what it got."""
    distributed.setup("cpu", local)
    total = torch.tensor([float(local.rank + 1)])
    torch.distributed.all_reduce(total)
    with open(f"{path}.{local.rank}", "w") as f:
        f.write(f"{total.item():g} {distributed.max_over_processes(float(local.rank)):g}")
    distributed.cleanup()


def exit_with_three(local: distributed.LocalGroup) -> None:
    raise SystemExit(3)


def test_local_workers_meet_reduce_and_leave_nothing_behind(tmp_path):
    """Process 0 here and 2 spawned workers form one gloo group over loopback."""
    out = str(tmp_path / "total")
    with distributed.LocalWorkers(3, reduce_and_report, (out,), timeout=120) as workers:
        reduce_and_report(out, workers.group)
        folder = workers.folder
        assert oct(os.stat(folder).st_mode & 0o777) == "0o700"   # only this user can meet there
    assert not os.path.exists(folder)
    for rank in range(3):
        assert (tmp_path / f"total.{rank}").read_text() == "6 2"     # 1 + 2 + 3; max rank 2


def test_a_failed_worker_is_an_error_of_the_run():
    with pytest.raises(RuntimeError, match="nerfx process 1 ended with exit code 3"):
        with distributed.LocalWorkers(2, exit_with_three, (), timeout=120):
            pass


@pytest.mark.slow
def test_a_user_error_ends_every_process_with_its_message(tmp_path):
    """A folder with no classes: each process says so in one line, no traceback, status 1."""
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "nerfx.train", "--model", "vit", "--data",
                           f"folder:{tmp_path / 'empty'}", "--fast", "--processes", "2",
                           "--out", str(tmp_path / "run")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "nerfx.train: " in done.stderr and "no class subfolders" in done.stderr


def test_models_that_average_gradients_take_the_processes_setting():
    from nerfx import trainers
    from nerfx.runs import RunError

    for model, processes in (("ddpm", 1), ("vae", 1), ("ldm", "auto"), ("vit", "auto")):
        config = trainers.new_config(trainers.TrainRequest(model=model, fast=True))
        assert config["settings"]["processes"] == processes, model
    ddpm = trainers.new_config(trainers.TrainRequest(model="ddpm", settings={"processes": 2}))
    assert ddpm["settings"]["processes"] == 2
    with pytest.raises(RunError, match="processes: not a setting of ngp"):
        trainers.new_config(trainers.TrainRequest(model="ngp", settings={"processes": 2}))


STRANDED = '''
import os, signal, sys, time
from nerfx import distributed

def die(local):
    raise SystemExit(3)

def meet(local):
    distributed.setup("cpu", local)

if __name__ == "__main__":
    if sys.argv[1] == "worker-dies":      # process 0 waits in the group for a worker that died
        with distributed.LocalWorkers(2, die, (), patience=1.0) as workers:
            distributed.setup("cpu", workers.group)
        print("process 0 went on", flush=True)
    else:                                 # process 0 is killed before the group meets
        workers = distributed.LocalWorkers(2, meet, ())
        time.sleep(2.0)
        print(workers.workers[0].pid, workers.folder, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
'''


def _run_stranded(tmp_path, case: str) -> subprocess.CompletedProcess:
    script = tmp_path / "stranded.py"
    script.write_text(STRANDED)
    return subprocess.run([sys.executable, str(script), case], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)


def test_process_0_does_not_wait_for_a_worker_that_died(tmp_path):
    """Without the watch, process 0 would wait in init_process_group for gloo's timeout."""
    start = time.monotonic()
    done = _run_stranded(tmp_path, "worker-dies")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "nerfx process 1 ended with exit code 3" in done.stderr
    assert "process 0 went on" not in done.stdout
    assert time.monotonic() - start < 120


def test_workers_leave_when_process_0_is_killed(tmp_path):
    done = _run_stranded(tmp_path, "parent-killed")
    assert done.returncode == -9
    pid, folder = done.stdout.split()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_alive(int(pid)) or os.path.exists(folder)):
        time.sleep(0.2)
    assert not _alive(int(pid)) and not os.path.exists(folder)


def _alive(pid: int) -> bool:
    """Whether pid is a process that has not ended (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
