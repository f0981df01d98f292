"""Trainers of the image models: `python -m nerfx.train --model vit|vae|ddpm --data shapes`.

Each module here is one model's trainer: a `MODEL` name, `PRESETS` (settings for "gpu", "cpu"
and "fast", as data), `OPS` (the nerfx.ops the model runs, whose backends metrics.json records)
and a `Trainer` class that is a nerfx.loop.Task. Adding a model is adding a module;
`trainer_modules()` finds them. The run folder is laid out like the NeRF runs': config.json,
metrics.json, checkpoint.pt (atomic, `--resume RUN`) and pictures. `--backend` is a setting of
the command (nerfx.ops.use_backend), not of the run: config.json does not hold it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

import torch

from nerfx import distributed, loop
from nerfx.data.image_datasets import ImageDataError
from nerfx.data.image_specs import load_image_dataset
from nerfx.ops import chosen_backends, use_backend
from nerfx.runs import CONFIG, RunError, add_backend_option, read_run_json, write_json

METRICS = "metrics.json"


def trainer_modules() -> dict[str, ModuleType]:
    """{model name: its trainer module}, for every module in this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "MODEL"):
            found[module.MODEL] = module
    return found


def image_models() -> tuple[str, ...]:
    return tuple(sorted(trainer_modules()))


def handles(argv: list[str]) -> bool:
    """Whether a `python -m nerfx.train` command line is for an image model: --model names one,
    or --resume names a run folder whose config.json does."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model")
    peek.add_argument("--resume", type=Path)
    known, _ = peek.parse_known_args(argv)
    if known.resume is not None:
        try:
            return json.loads((known.resume / CONFIG).read_text()).get("model") in image_models()
        except (OSError, ValueError):
            return False
    return known.model in image_models()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.train",
                                description="train an image model (ViT, VAE, DDPM)")
    p.add_argument("--model", choices=image_models(), help="the image model to train")
    p.add_argument("--data", default="shapes",
                   help="shapes (built in), mnist:PATH, cifar10:PATH or folder:PATH")
    p.add_argument("--fast", action="store_true", help="a short run (minutes on a CPU)")
    p.add_argument("--steps", type=int, help="training steps (default: preset)")
    p.add_argument("--max-seconds", type=float, help="stop training after this much time")
    p.add_argument("--batch-size", type=int, help="images per step (default: preset)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: preset)")
    p.add_argument("--image-size", type=int, help="train at this resolution (default: preset)")
    p.add_argument("--autoencoder", type=Path,
                   help="ldm: take the autoencoder of this earlier ldm run (frozen)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any preset setting (JSON values), e.g. --set depth=6")
    add_backend_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run folder (default runs/<data>-<model>-<time>)")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile-step", type=int, metavar="N",
                   help="profile steps N to N+2 into RUN/profile/ (trace, operators, host syncs)")
    return p.parse_args(argv)


def read_run_config(run: Path) -> dict:
    """The config.json of an image-model run."""
    config = read_run_json(run)
    if config.get("model") not in trainer_modules():
        raise RunError(f"{run / CONFIG}: not an image-model run (model {config.get('model')!r})")
    return config


def backends_of(model: str, device: torch.device | str) -> dict[str, str]:
    """{op: backend} for the ops the model runs, under the run's backend setting."""
    return chosen_backends(device, ops=trainer_modules()[model].OPS)


def settings_for(args: argparse.Namespace, module: ModuleType) -> dict:
    """The preset for this device (or --fast), with the command line's overrides."""
    preset = "fast" if args.fast else ("gpu" if args.device.startswith("cuda") else "cpu")
    settings = {**module.PRESETS[preset], "preset": preset}
    for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                       ("image_size", args.image_size), ("max_seconds", args.max_seconds)):
        if value is not None:
            settings[key] = value
    if args.autoencoder is not None:
        settings["autoencoder_run"] = str(args.autoencoder)
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"nerfx.train: --set takes KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text            # a plain string, e.g. --set size=S
    return settings


def train(args: argparse.Namespace) -> dict:
    if args.resume:
        run = args.resume
        config = read_run_config(run)
        if args.steps is not None:
            config["settings"]["steps"] = args.steps
        if args.max_seconds is not None:
            config["settings"]["max_seconds"] = args.max_seconds
    else:
        if args.model is None:
            raise SystemExit("nerfx.train: choose --model")
        module = trainer_modules()[args.model]
        data_name = str(args.data).split(":")[0]
        run = args.out or Path("runs") / f"{data_name}-{args.model}-" \
                                         f"{datetime.now():%Y%m%d-%H%M%S}"
        config = {"model": args.model, "data": args.data, "seed": args.seed,
                  "settings": settings_for(args, module)}
    module = trainer_modules()[config["model"]]
    settings = config["settings"]
    device = distributed.setup(torch.device(args.device).type) or torch.device(args.device)
    torch.manual_seed(config["seed"])       # the same initial weights in every process
    main = distributed.is_main()
    if main:
        world = distributed.world_size()
        print(f"nerfx.train: {config['model']} on {config['data']} ({settings['preset']} "
              f"preset, {device}{f', {world} processes' if world > 1 else ''}); run folder "
              f"{run}", flush=True)
    size = settings.get("image_size")
    train_set = load_image_dataset(config["data"], "train", size=size, seed=config["seed"],
                                   n=settings.get("train_images"))
    test_set = load_image_dataset(config["data"], "test", size=size, seed=config["seed"],
                                  n=settings.get("test_images"))
    trainer = module.Trainer(settings, train_set, test_set, device, config["seed"])
    torch.manual_seed(distributed.process_seed(config["seed"]))   # then each its own stream
    config["classes"] = list(train_set.classes)
    config["image_shape"] = list(train_set.images.shape[1:])
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / CONFIG, config)
    distributed.barrier()
    state = loop.resume(run, trainer, device) if args.resume else None
    state = loop.run_loop(trainer, run, loop.LoopSettings(
        steps=settings["steps"], max_seconds=settings.get("max_seconds"),
        save_every=settings.get("save_every", 500),
        snapshot_every=settings.get("snapshot_every", 0),
        profile_step=getattr(args, "profile_step", None)), state, desc=config["model"])
    if not main:                  # process 0 evaluates and writes; the others are done
        distributed.barrier()
        distributed.cleanup()
        return {"steps": state.step}
    start = time.perf_counter()
    metrics = trainer.finish(run)
    metrics.update(steps=state.step, train_seconds=round(state.seconds, 1),
                   finish_seconds=round(time.perf_counter() - start, 1),
                   processes=distributed.world_size(),
                   backends=backends_of(config["model"], device),
                   images_per_second=round(state.step * trainer.items_per_step
                                           * distributed.world_size()
                                           / max(state.seconds, 1e-9), 1))
    write_json(run / METRICS, metrics)
    print(f"nerfx.train: {config['model']} {state.step} steps in {state.seconds:.0f} s: "
          f"{trainer.summary(metrics)}; {run}", flush=True)
    distributed.barrier()
    distributed.cleanup()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        with use_backend(args.backend):
            return train(args)
    except (ImageDataError, RunError) as exc:
        raise SystemExit(f"nerfx.train: {exc}") from None
