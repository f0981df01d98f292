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

import torch

from nerfx import trainers
from nerfx.data.image_datasets import ImageDataError
from nerfx.data.image_specs import load_image_dataset
from nerfx.images import save_grid
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.ops import use_backend
from nerfx.runs import CHECKPOINT, RunError, add_backend_option, load_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.sample", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder of a ddpm, ldm or vae run")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps S")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    p.add_argument("--spacing", choices=["uniform", "quadratic"], default="uniform")
    p.add_argument("--n", type=int, default=64, help="images (frames with --interpolate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpolate", help="two seeds A,B: slerp between their noises")
    p.add_argument("--guidance", type=float,
                   help="ldm: classifier-free guidance scale s (1: conditional model; default: "
                   "the run's)")
    p.add_argument("--class", dest="label",
                   help="ldm: the class to draw, by number or name (default: a grid of all)")
    p.add_argument("--per-class", type=int, default=8, help="ldm: images per class in the grid")
    p.add_argument("--out", type=Path, help="PNG to write (default: in the run folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_backend_option(p)
    args = p.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.per_class < 1:
        p.error("--n, --steps and --per-class must be at least 1")
    return args


def sample_ddpm(args: argparse.Namespace, config: dict, state: dict) -> Path:
    model, diffusion = trainers.trainer_modules()["ddpm"].load_trained(config, state, args.device)
    shape = tuple(config["image_shape"])
    ddim = DDIMSampler(diffusion, DDIMConfig(steps=args.steps, eta=args.eta,
                                             spacing=args.spacing))
    if args.interpolate:
        try:
            a, b = (int(s) for s in args.interpolate.split(","))
        except ValueError:
            raise SystemExit("nerfx.sample: --interpolate takes two seeds, as in 3,7") from None
        z0, z1 = (torch.randn((1, *shape), generator=torch.Generator().manual_seed(s))
                  for s in (a, b))
        images = ddim.interpolate(model, z0.to(args.device), z1.to(args.device), args.n)
        name = f"interpolate_{a}_{b}_ddim{args.steps}.png"
    else:
        generator = torch.Generator().manual_seed(args.seed)
        if args.sampler == "ddpm":
            images = diffusion.sample(model, (args.n, *shape), generator, args.device,
                                      progress=True)
            name = f"samples_ddpm{diffusion.num_timesteps}_seed{args.seed}.png"
        else:
            images = ddim.sample(model, (args.n, *shape), generator, args.device, progress=True)
            name = f"samples_ddim{args.steps}_eta{args.eta:g}_seed{args.seed}.png"
    nrow = args.n if args.interpolate else min(args.n, 8)      # a strip, or rows of 8
    return save_grid(images, args.out or args.run / name, nrow=nrow)


def sample_ldm(args: argparse.Namespace, config: dict, state: dict) -> Path:
    if args.interpolate:
        raise RunError("--interpolate is for ddpm runs; ldm runs take --class and --guidance")
    model = trainers.trainer_modules()["ldm"].load_trained(config, state, args.device)
    classes = list(config["classes"])
    guidance = config["settings"].get("guidance", 1.0) if args.guidance is None else args.guidance
    if args.label is None:
        labels = torch.arange(len(classes)).repeat_interleave(args.per_class)  # a row per class
        nrow, what = args.per_class, "classes"
    else:
        label = int(args.label) if args.label.lstrip("-").isdigit() else (
            classes.index(args.label) if args.label in classes else -1)
        if not 0 <= label < len(classes):
            raise RunError(f"--class {args.label}: this run's classes are 0..{len(classes) - 1} "
                           f"({', '.join(classes)})")
        labels = torch.full((args.n,), label)
        nrow, what = min(args.n, 8), f"class{label}"
    generator = torch.Generator().manual_seed(args.seed)
    images = model.sample(labels, guidance, args.sampler, args.steps, args.eta, generator,
                          progress=True)
    steps = (f"ddpm{model.diffusion.num_timesteps}" if args.sampler == "ddpm"
             else f"ddim{args.steps}_eta{args.eta:g}")
    name = f"samples_{what}_guidance{guidance:g}_{steps}_seed{args.seed}.png"
    return save_grid(images, args.out or args.run / name, nrow=nrow)


def sample_vae(args: argparse.Namespace, config: dict, state: dict) -> Path:
    model = trainers.trainer_modules()["vae"].load_trained(config, state, args.device)
    value_range = (0.0, 1.0)
    generator = torch.Generator().manual_seed(args.seed)
    samples = model.sample(args.n, generator, args.device)
    _, size, _ = config["image_shape"]
    test = load_image_dataset(config["data"], "test", size=size, seed=config["seed"], n=16)
    x = test.as_float(value_range).to(args.device)
    pairs = torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)
    strip = model.interpolate(x[0], x[1], 10)
    out = args.out or args.run / f"vae_samples_seed{args.seed}.png"
    for images, suffix, nrow in ((samples, "", 8), (pairs, "_reconstructions", 8),
                                 (strip, "_interpolation", 10)):
        save_grid(images, out.with_name(out.stem + suffix + out.suffix),
                  nrow=min(len(images), nrow), value_range=value_range)
    return out


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        config = trainers.read_run_config(args.run)
        state = load_checkpoint(args.run / CHECKPOINT, args.device)["task"]
        samplers = {"ddpm": sample_ddpm, "ldm": sample_ldm, "vae": sample_vae}
        if config["model"] != "ldm" and (args.guidance is not None or args.label is not None):
            raise RunError(f"{args.run} is a {config['model']} run: --guidance and --class are "
                           "for ldm (class-conditional) runs")
        if config["model"] not in samplers:
            raise RunError(f"{args.run} is a {config['model']} run; nerfx.sample draws from "
                           f"{', '.join(samplers)} runs")
        with use_backend(args.backend):
            out = samplers[config["model"]](args, config, state)
    except (RunError, ImageDataError) as exc:
        raise SystemExit(f"nerfx.sample: {exc}") from None
    print(f"nerfx.sample: wrote {out}")
    return out


if __name__ == "__main__":
    main()
