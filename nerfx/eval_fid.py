"""`python -m nerfx.eval_fid RUN`: DDIM's table for a trained DDPM run — the Fréchet distance of
samples against the test images for S steps and η, and DDPM's ancestral sampler with all T steps.

    python -m nerfx.eval_fid runs/shapes-ddpm-... --steps 10,20,50,100 --eta 0,1 --n 1000

The distance is on features of a classifier nerfx trains on the run's dataset (nerfx.fid):
comparable between nerfx runs on the same data and size, not with published FIDs. Every row
compares n samples with all the test images (up to 10,000); the floor is n training images
against the same test images, i.e. what a perfect model would score with n samples; beside them,
the classifier's accuracy on those real test images. The table is written to RUN/fid.json and
RUN/fid.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nerfx import fid, trainers
from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.data import load_image_dataset
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.ops import chosen_backends, use_backend
from nerfx.runs import read_run_checkpoint, read_run_config, write_json

REFERENCE_IMAGES = 10_000  # test images the distances are measured against, at most


def int_list(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def float_list(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.eval_fid", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder of a ddpm run")
    p.add_argument("--sampler", choices=["ddim"], default="ddim")
    p.add_argument("--steps", type=int_list, default=[10, 20, 50, 100], help="DDIM steps S")
    p.add_argument("--eta", type=float_list, default=[0.0, 1.0], help="DDIM η values")
    p.add_argument("--no-ddpm", action="store_true", help="skip DDPM's T-step row")
    p.add_argument("--n", type=int, default=1000,
                   help="samples per entry (and training images for the floor)")
    p.add_argument("--batch", type=int, default=250, help="samples drawn at once")
    p.add_argument("--seed", type=int, default=0)
    add_device_option(p)
    add_backend_option(p)
    args = p.parse_args(argv)
    if args.n < 2 or not args.steps or not args.eta:
        p.error("--n must be at least 2, and --steps and --eta non-empty")
    return args


def draw(sample_batch, n: int, batch: int, seed: int) -> torch.Tensor:
    """n images from sample_batch(count, generator), in batches, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([sample_batch(min(batch, n - i), generator).cpu()
                      for i in range(0, n, batch)])


def evaluate(args: argparse.Namespace) -> dict:
    config = read_run_config(args.run, ("ddpm",))
    state = read_run_checkpoint(args.run, config, args.device)["task"]
    model, diffusion = trainers.trainer("ddpm").load_trained(config, state, args.device)
    shape = tuple(config["image_shape"])
    size = shape[-1]
    net = fid.feature_net_for(config["data"], size, fid.default_cache(), config["seed"],
                              args.device)
    test = load_image_dataset(config["data"], "test", size=size, seed=config["seed"])
    train = load_image_dataset(config["data"], "train", size=size, seed=config["seed"])
    # The reference: every test image (at most REFERENCE_IMAGES); the floor: n training images
    # against it, as many as each row's samples (a distance on 500 images moves by a few units
    # with the draw, so the floor shows the noise level too).
    chosen = fid.spread_indices(len(test), REFERENCE_IMAGES)
    reference = fid.statistics(net, test.as_float(index=chosen))
    # How far the judge can be trusted: its accuracy on the real test images.
    judge_accuracy = fid.class_accuracy(net, test.as_float(index=chosen), test.labels[chosen])
    print(f"classifier accuracy on {len(chosen)} real test images: {judge_accuracy:.2%}",
          flush=True)

    def distance(images: torch.Tensor) -> float:
        return fid.score_samples(net, images, reference)["frechet"]

    floor = distance(train.as_float(index=fid.spread_indices(len(train), args.n)))
    table = {"floor (train vs test images)": floor, "n": args.n,
             "backends": chosen_backends(args.device, ops=trainers.trainer("ddpm").OPS),
             "classifier test accuracy": judge_accuracy, "ddim": {}}
    for steps in args.steps:
        for eta in args.eta:
            sampler = DDIMSampler(diffusion, DDIMConfig(steps=steps, eta=eta))
            images = draw(lambda k, g, s=sampler: s.sample(model, (k, *shape), g, args.device,
                                                           progress=True),
                          args.n, args.batch, args.seed)
            table["ddim"][f"S={steps}, eta={eta:g}"] = distance(images)
            print(f"DDIM S={steps:<4} eta={eta:g}: {table['ddim'][f'S={steps}, eta={eta:g}']}",
                  flush=True)
    if not args.no_ddpm:
        images = draw(lambda k, g: diffusion.sample(model, (k, *shape), g, args.device,
                                                    progress=True),
                      args.n, args.batch, args.seed)
        table[f"ddpm (T={diffusion.num_timesteps})"] = distance(images)
        print(f"DDPM T={diffusion.num_timesteps}: {table[f'ddpm (T={diffusion.num_timesteps})']}",
              flush=True)
    write_json(args.run / "fid.json", table)
    markdown = to_markdown(table, args)
    (args.run / "fid.md").write_text(markdown)
    print(markdown)
    return table


def to_markdown(table: dict, args: argparse.Namespace) -> str:
    head = "| S | " + " | ".join(f"η = {eta:g}" for eta in args.eta) + " |"
    lines = [f"Fréchet distance on nerfx classifier features, {table['n']} samples "
             f"(lower is better; floor {table['floor (train vs test images)']}; the "
             f"classifier names {table['classifier test accuracy']:.2%} of the real test "
             "images)", "",
             head, "|" + " --- |" * (len(args.eta) + 1)]
    for steps in args.steps:
        cells = [str(table["ddim"][f"S={steps}, eta={eta:g}"]) for eta in args.eta]
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    for key, value in table.items():
        if key.startswith("ddpm"):
            lines.append(f"\n{key}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with user_errors("nerfx.eval_fid"), use_backend(args.backend):
        return evaluate(args)


if __name__ == "__main__":
    main()
