"""`python -m nerfx.train`: train any nerfx model, evaluate it, write its run folder.

    python -m nerfx.train --scene lego --fast              # Instant-NGP (the default model)
    python -m nerfx.train --model nerf --fast              # the original NeRF
    python -m nerfx.train --model vit|vae|ddpm|ldm --data shapes --fast
    python -m nerfx.train --resume RUN                     # continue a run

Radiance fields train on a scene: --data PATH (a NeRF-synthetic or Instant-NGP folder) or
--scene NAME ($NERFX_DATA/nerf_synthetic/NAME; without a real lego, nerfx generates its built-in
one and says so; --scene room is nerfx's built-in capture-like scene). Image models train on
shapes (built in), mnist:PATH, cifar10:PATH or folder:PATH. Each model's presets
(nerfx/trainers/<model>.py) are chosen by device and --fast; the flags below and --set override
them. The run folder holds config.json, metrics.json, the model's pictures and checkpoint.pt
(written atomically; --resume continues it, random state included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nerfx import trainers
from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.ops import use_backend
from nerfx.runs import RunError
from nerfx.view.__main__ import add_serve_options, announce, wait_for_interrupt

# Flags that override a preset setting of the same name (the model must have it).
SETTING_FLAGS = ("steps", "max_seconds", "processes", "batch_samples", "batch_rays", "downscale",
                 "precision", "eval_views", "video_frames", "test_every", "batch_size", "lr",
                 "image_size")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a training run, for every model."""
    p.add_argument("--model", default="ngp", choices=trainers.models(),
                   help="what to train (default ngp: Instant-NGP)")
    p.add_argument("--data", help="radiance fields: a scene folder; image models: shapes, "
                                  "mnist:PATH, cifar10:PATH or folder:PATH")
    p.add_argument("--scene", help="radiance fields: a NeRF-synthetic scene by name, or a "
                                   "built-in one: lego, or room (an object in a textured room, "
                                   "lens distortion, aabb_scale 4); the same as --data NAME")
    p.add_argument("--fast", action="store_true",
                   help="the short preset (about a minute on a GPU, minutes on a CPU)")
    p.add_argument("--steps", type=int, help="training steps (default: preset)")
    p.add_argument("--max-seconds", type=float, help="stop training after this much time")
    radiance = p.add_argument_group("radiance fields (ngp, nerf)")
    radiance.add_argument("--batch-samples", type=int,
                          help="field samples per step; ngp adapts its ray count to it")
    radiance.add_argument("--batch-rays", type=int, help="rays per step (first step, with ngp)")
    radiance.add_argument("--downscale", type=int,
                          help="image downscale factor (default: the preset's, raised on the CPU "
                               "where images would be over 160 px on their long side)")
    radiance.add_argument("--precision", choices=["auto", "fp32", "mixed"],
                          help="mixed: fp16 autocast with loss scaling on a GPU, bf16 on a CPU "
                               "(auto: mixed on a GPU)")
    radiance.add_argument("--eval-views", type=int, help="test views to evaluate")
    radiance.add_argument("--video-frames", type=int, help="turntable frames (0: no video)")
    radiance.add_argument("--test-every", type=int,
                          help="Instant-NGP folders: hold out every n-th image for testing")
    images = p.add_argument_group("image models (vit, vae, ddpm, ldm)")
    images.add_argument("--batch-size", type=int, help="images per step")
    images.add_argument("--lr", type=float, help="peak learning rate")
    images.add_argument("--image-size", type=int, help="train at this resolution")
    images.add_argument("--autoencoder", type=Path,
                        help="ldm: take the autoencoder of this earlier ldm run (frozen)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any preset setting (JSON values), e.g. --set depth=6")
    add_backend_option(p)
    add_device_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run folder (default runs/<data>-<model>-<time>)")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--processes", type=processes_option, metavar="N|auto",
                   help="CPU, models that have the setting (vit): train in N processes on this "
                        "machine, gradients averaged, each of --threads threads (default 1); "
                        "auto: one per free core (vit --fast's default)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads to train with (default: the cores other processes leave "
                        "free, followed as they change)")
    p.add_argument("--profile-step", type=int, metavar="N",
                   help="profile steps N to N+2 into RUN/profile/ (trace, operators, host syncs)")
    view = p.add_argument_group("the browser viewer (radiance fields; pip install nerfx[view])")
    view.add_argument("--view", action="store_true",
                      help="serve a page that shows the scene while it trains, and afterwards "
                           "until Ctrl-C")
    add_serve_options(view)


def processes_option(text: str) -> int | str:
    """--processes: a count of at least 1, or auto."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a count of processes (1 or more) or auto, not {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.train", description=__doc__.split("\n")[0])
    add_run_options(p)
    return p.parse_args(argv)


def parse_set(items: list[str]) -> dict:
    """--set KEY=VALUE items -> {key: value}: JSON values, else the plain string."""
    settings = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RunError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text            # a plain string, e.g. --set size=S
    return settings


def request_of(args: argparse.Namespace) -> trainers.TrainRequest:
    """The command line as the trainer driver's request."""
    extra = parse_set(args.set)
    if args.autoencoder is not None:
        extra["autoencoder_run"] = str(args.autoencoder)
    if args.downscale is not None:
        extra.setdefault("max_image_side", None)   # the downscale asked for, not a fitted one
    return trainers.TrainRequest(
        model=args.model, data=args.data or args.scene, fast=args.fast, seed=args.seed,
        device=args.device, out=args.out, resume=args.resume,
        settings={key: getattr(args, key) for key in SETTING_FLAGS
                  if getattr(args, key) is not None},
        extra_settings=extra, profile_step=args.profile_step, threads=args.threads)


TEST_PSNR_SECONDS = 20.0   # training seconds between two PSNRs of the held test view (--view)


def viewer_for(args: argparse.Namespace, viewers: list):
    """--view: the observer factory of TrainRequest.observe. It opens the viewer on the task's
    model (the EMA copy) and training cameras, and feeds it between steps; viewers gets the
    viewer, which outlives training."""
    from nerfx.view import open_viewer
    from nerfx.view.sources import held_view_psnr, scene_view

    def observe(task, run: Path):
        if not hasattr(task, "train_set"):
            raise RunError(f"--view shows radiance fields (ngp, nerf), not {args.model}")
        viewer = open_viewer(task.model, scene_view(task.train_set, task.model), run,
                             host=args.host, port=args.port, training=True)
        viewers.append(viewer)
        announce("nerfx.train", viewer, "viewer")
        last_test = [float("-inf")]

        def observer(state, losses: dict) -> None:
            marched = next(reversed(task.marched_per_ray.values()), None)
            extra = {"rays": task.items_per_step}
            if marched is not None:
                extra["marched/ray"] = marched
            viewer.between_steps(state, {**losses, **extra})
            if (viewer.scheduler.pages and len(task.test_set)
                    and state.seconds - last_test[0] >= TEST_PSNR_SECONDS):
                last_test[0] = state.seconds
                viewer.test_psnr(lambda: held_view_psnr(task.model, task.test_set, 0))
        return observer
    return observe


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    viewers: list = []
    with user_errors("nerfx.train"), use_backend(args.backend):
        request = request_of(args)
        if args.view:
            from nerfx.view import require_viser
            require_viser()
            request.observe = viewer_for(args, viewers)
        try:
            metrics = trainers.train(request)
        except BaseException as exc:
            for viewer in viewers:
                viewer.close()
            if isinstance(exc, KeyboardInterrupt):       # Ctrl-C
                print("nerfx.train: interrupted; --resume RUN continues from the last "
                      "checkpoint", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            raise
    for viewer in viewers:        # training is over: the page stays up with the final weights
        viewer.start()
        print(f"nerfx.train: training done; the viewer stays at {viewer.address.url} "
              "(Ctrl-C to stop)", flush=True)
        wait_for_interrupt(viewer)
    return metrics


if __name__ == "__main__":
    main()
