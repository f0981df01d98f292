"""Every model's trainer: a registry of the modules in this package, and the driver that runs one.

A trainer module is one model's: adding a model is adding a module here (and its paper in
nerfx/models), with no list to edit. It holds

    MODEL      the name --model takes
    DEFAULT_DATA  what it trains on without --data ("lego", "shapes")
    PRESETS    settings as data: "gpu", "cpu", "gpu-fast" and "cpu-fast" (--fast), each a dict
    OPS        the nerfx.ops the model runs (metrics.json records the backend each ran on)
    DATA_PARALLEL  (optional) True where its steps average gradients over processes
               (nerfx.distributed): its runs take the "processes" setting (default 1)
    make_task(config, device) -> a nerfx.loop Task: loads the data, builds the model, and adds to
               config what the run folder must keep to rebuild it (classes, cameras, ...)
    load_trained(config, task_state, device) -> the trained model (EMA weights where kept)
    sample(options, run, config, task_state) -> Path   (optional: `python -m nerfx.sample`)

and its Task, beyond nerfx.loop's, has `finish(run) -> metrics` (evaluation and pictures),
`summary(metrics) -> str` (the final line) and optionally `begin()` (before the first step, after
any resume) and `unit` (what items_per_step counts; "img" by default).

The driver, `train(request)`, is the same for every model: the preset for the device with the
request's overrides, the run folder (config.json, atomic checkpoints, metrics.json), resume,
the loop, the final evaluation. The command line is nerfx/train.py; nothing here parses one.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from nerfx import distributed, loop
from nerfx.data import ImageDataError, SceneError
from nerfx.ops import BackendError, chosen_backends
from nerfx.run_format import FORMAT_VERSION
from nerfx.runs import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RunError,
    data_name,
    read_run_config,
    write_json,
)

PRESET_NAMES = ("gpu", "cpu", "gpu-fast", "cpu-fast")
# A user's mistakes, whose message names the file or setting at fault: a command ends with that
# message instead of a traceback (nerfx.cli.user_errors).
USER_ERRORS: tuple[type[Exception], ...] = (SceneError, ImageDataError, RunError, BackendError)
# Settings every model takes whether or not its presets name them.
COMMON_SETTINGS = ("steps", "max_seconds")
# Settings a resumed run takes from the command (the others are the run's own): how long, and
# on how many processes (a data-parallel run resumes on any number: nerfx.loop.BatchStream).
RESUME_SETTINGS = (*COMMON_SETTINGS, "processes")


@cache
def trainer_modules() -> dict[str, ModuleType]:
    """{model name: its trainer module}, for every module in this package that has a MODEL."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "MODEL"):
            found[module.MODEL] = module
    return found


def models() -> tuple[str, ...]:
    return tuple(sorted(trainer_modules()))


def trainer(model: str) -> ModuleType:
    modules = trainer_modules()
    if model not in modules:
        raise RunError(f"unknown model {model!r}; nerfx trains {', '.join(sorted(modules))}")
    return modules[model]


def preset_name(device: str, fast: bool) -> str:
    """"gpu" on a CUDA device, else "cpu"; "-fast" for a short run."""
    return ("gpu" if device.startswith("cuda") else "cpu") + ("-fast" if fast else "")


@dataclass
class TrainRequest:
    """What to train: a new run (model, data, preset overrides) or the run to resume."""

    model: str = "ngp"
    data: str | None = None           # the model's data (None: its DEFAULT_DATA)
    fast: bool = False
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None           # run folder (default runs/<data>-<model>-<time>)
    resume: Path | None = None        # run folder to continue (its own settings)
    settings: dict = field(default_factory=dict)  # overrides of preset settings it must have
    extra_settings: dict = field(default_factory=dict)  # overrides that may add settings
    profile_step: int | None = None
    threads: int | None = None        # CPU threads (None: follow the free cores)
    # Called with the task and its run folder once both are ready (after any resume), on the
    # main process; returns what the loop calls between steps (nerfx.loop.run_loop's observer).
    observe: Callable[[object, Path], loop.Observer] | None = None


def merged_settings(module: ModuleType, preset: str, settings: dict, extra: dict) -> dict:
    """The preset's settings with the overrides; an override of a setting the model does not
    have is refused (extra may add settings)."""
    defaults = {"processes": 1} if getattr(module, "DATA_PARALLEL", False) else {}
    merged = {**defaults, **module.PRESETS[preset], "preset": preset}
    unknown = sorted(k for k in settings if k not in merged and k not in COMMON_SETTINGS)
    if unknown:
        raise RunError(f"{', '.join(unknown)}: not a setting of {module.MODEL} (its settings: "
                       f"{', '.join(sorted(merged))})")
    return merged | settings | extra


def new_config(request: TrainRequest) -> dict:
    module = trainer(request.model)
    settings = merged_settings(module, preset_name(request.device, request.fast),
                               request.settings, request.extra_settings)
    return {"format_version": FORMAT_VERSION, "model": request.model,
            "data": request.data or module.DEFAULT_DATA,
            "seed": request.seed, "settings": settings}


def run_folder_name(config: dict) -> str:
    """<data>-<model>-<time>: the data's kind (shapes, mnist, ...), scene or folder's name."""
    return f"{data_name(config['data'])}-{config['model']}-{datetime.now():%Y%m%d-%H%M%S}"


def train(request: TrainRequest, local: distributed.LocalGroup | None = None) -> dict:
    """Trains (or resumes), evaluates, writes the run folder; returns metrics.json's contents.
    On a CPU, with a "processes" setting, it first starts the other processes of the run
    (nerfx.distributed.LocalWorkers; `local` is how each of those enters here)."""
    if request.resume is not None:
        run = request.resume
        config = read_run_config(run, models())
        config["settings"].update({k: v for k, v in request.settings.items()
                                   if k in COMMON_SETTINGS
                                   or (k in RESUME_SETTINGS and k in config["settings"])})
    else:
        config, run = new_config(request), request.out
    world = 1 if local is not None else distributed.local_processes(
        config["settings"].get("processes"), torch.device(request.device).type, request.threads)
    if world == 1:
        return train_in_group(request, config, run, local)
    run = run or Path("runs") / run_folder_name(config)     # every process the same folder
    request = replace(request, out=run, threads=request.threads or 1)
    with distributed.LocalWorkers(world, local_worker, (replace(request, observe=None),)
                                  ) as workers:
        return train_in_group(request, config, run, workers.group)


def local_worker(request: TrainRequest, local: distributed.LocalGroup) -> None:
    """A process that nerfx.distributed.LocalWorkers started: trains its share, quietly."""
    try:
        train(request, local)
    except KeyboardInterrupt:          # Ctrl-C reaches every process; process 0 reports it
        raise SystemExit(130) from None
    except USER_ERRORS as error:       # bad input: one line (process 0 meets and reports it too)
        print(f"nerfx.train (process {local.rank}): {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def train_in_group(request: TrainRequest, config: dict, run: Path | None,
                   local: distributed.LocalGroup | None) -> dict:
    """train() in one process of the run's group (or alone)."""
    module = trainer(config["model"])
    device = (distributed.setup(torch.device(request.device).type, local)
              or torch.device(request.device))
    torch.manual_seed(config["seed"])       # the same initial weights in every process
    task = module.make_task(config, device)
    torch.manual_seed(distributed.process_seed(config["seed"]))   # then each its own stream
    run = run or Path("runs") / run_folder_name(config)
    settings, main = config["settings"], distributed.is_main()
    if main:
        world = distributed.world_size()
        print(f"nerfx.train: {config['model']} on {config['data']} "
              f"({settings['preset']} preset, {device}"
              f"{f', {world} processes' if world > 1 else ''}); run folder {run}", flush=True)
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / CONFIG, config)
    distributed.barrier()
    state = loop.LoopState()
    if (run / CHECKPOINT).is_file():
        state = loop.resume(run, config, task, device)
        if main:
            print(f"nerfx.train: resumed {run} at step {state.step} ({state.seconds:.1f} s "
                  "trained)", flush=True)
    if hasattr(task, "begin"):
        task.begin()
    unit = getattr(task, "unit", "img")
    observer = request.observe(task, run) if request.observe is not None and main else None
    state = loop.run_loop(task, run, loop.LoopSettings(
        steps=settings["steps"], max_seconds=settings.get("max_seconds"),
        save_every=settings.get("save_every", 500),
        snapshot_every=settings.get("snapshot_every", 0), unit=unit,
        profile_step=request.profile_step, threads=request.threads), state,
        desc=f"train {config['model']}", observer=observer)
    if not main:                  # process 0 evaluates and writes; the others are done
        distributed.barrier()
        distributed.cleanup()
        return {"steps": state.step}
    start = time.perf_counter()
    metrics = {"model": config["model"], "data": config["data"], **task.finish(run),
               "steps": state.step, "train_seconds": round(state.seconds, 2),
               "finish_seconds": round(time.perf_counter() - start, 1),
               "processes": distributed.world_size(), "device": str(device),
               "backends": chosen_backends(device, ops=module.OPS)}
    if unit == "img":
        metrics["images_per_second"] = round(state.step * task.items_per_step
                                             * distributed.world_size()
                                             / max(state.seconds, 1e-9), 1)
    write_json(run / METRICS, metrics)
    print(f"nerfx.train: {config['model']} on {data_name(config['data'])}, {state.step} steps "
          f"in {state.seconds:.1f} s: "
          f"{task.summary(metrics)} -> {run}", flush=True)
    distributed.barrier()
    distributed.cleanup()
    return metrics
