"""`python -m nerfx.sample RUN`: pictures from a trained DDPM, latent diffusion or VAE run.

DDPM runs: `--sampler ddim --steps 50 --eta 0` (or `--sampler ddpm`, all T steps) draws `--n`
images from the EMA weights with `--seed`; `--interpolate A,B` decodes a slerp between the noises
of seeds A and B at η = 0 [DDIM §5.3]. VAE runs: samples, reconstructions of test images (truth
beside reconstruction) and an interpolation strip between two test images' posterior means.
Latent diffusion (ldm) runs: `--guidance 3 --class 2` draws `--n` images of class 2 (a number or
a class name) with classifier-free guidance scale 3; without `--class`, a grid with one row of
`--per-class` images for every class. The sampler options are DDPM's (DDIM `--steps`, `--eta`, or
`--sampler ddpm`); guidance defaults to the run's own setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfx import trainers
from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.ops import use_backend
from nerfx.runs import RunError, read_run_checkpoint, read_run_config

# Options that only some models take: each trainer module lists its own in SAMPLE_OPTIONS.
MODEL_OPTIONS = {"interpolate": "--interpolate", "guidance": "--guidance", "label": "--class",
                 "per_class": "--per-class"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.sample", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder of a ddpm, ldm or vae run")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps S")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    p.add_argument("--spacing", choices=["uniform", "quadratic"], default="uniform")
    p.add_argument("--n", type=int, default=64, help="images (frames with --interpolate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpolate", help="ddpm: two seeds A,B: slerp between their noises")
    p.add_argument("--guidance", type=float,
                   help="ldm: classifier-free guidance scale s (1: conditional model; default: "
                   "the run's)")
    p.add_argument("--class", dest="label",
                   help="ldm: the class to draw, by number or name (default: a grid of all)")
    p.add_argument("--per-class", type=int, help="ldm: images per class in the grid (8)")
    p.add_argument("--out", type=Path, help="PNG to write (default: in the run folder)")
    add_device_option(p)
    add_backend_option(p)
    args = p.parse_args(argv)
    if args.n < 1 or args.steps < 1 or (args.per_class is not None and args.per_class < 1):
        p.error("--n, --steps and --per-class must be at least 1")
    return args


def sample(args: argparse.Namespace) -> Path:
    samplers = {name: module for name, module in trainers.trainer_modules().items()
                if hasattr(module, "sample")}
    config = read_run_config(args.run)
    module = samplers.get(config["model"])
    if module is None:
        raise RunError(f"{args.run} is a {config['model']} run; nerfx.sample draws from "
                       f"{', '.join(sorted(samplers))} runs")
    refused = [flag for key, flag in MODEL_OPTIONS.items()
               if getattr(args, key) is not None and key not in module.SAMPLE_OPTIONS]
    if refused:
        raise RunError(f"{args.run} is a {config['model']} run: {', '.join(refused)} "
                       f"{'is' if len(refused) == 1 else 'are'} not for it")
    task_state = read_run_checkpoint(args.run, config, args.device)["task"]
    with use_backend(args.backend):
        return module.sample(args, args.run, config, task_state)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    with user_errors("nerfx.sample"):
        out = sample(args)
    print(f"nerfx.sample: wrote {out}")
    return out


if __name__ == "__main__":
    main()
