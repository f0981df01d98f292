"""`python -m nerfx.train --scene lego --fast`: train Instant-NGP on a scene, evaluate, render.

Without a real NeRF-synthetic lego (`--data PATH` or $NERFX_DATA/nerf_synthetic/lego), nerfx
generates its built-in lego scene and says so. On a CPU a scaled-down recipe is chosen and
announced. The run folder holds config.json, metrics.json, test renders beside the ground truth,
depth maps and checkpoint.pt (written atomically; `--resume RUN` continues it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nerfx.data import lego
from nerfx.data.scenes import Scene, composite_on, load_scene
from nerfx.metrics import psnr, ssim
from nerfx.models.ngp import InstantNGP, NGPConfig
from nerfx.ops import _dispatch
from nerfx.render import OccupancyGrid
from nerfx.render.inference import render_rays_compacting
from nerfx.render.renderer import camera_rays, render_rays

CLOCK_MARKS = (1, 5, 15, 60, 300)  # seconds of training at which the paper reports test PSNR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.train", description=__doc__.split("\n")[0])
    p.add_argument("--scene", default="lego", help="scene name (lego is built in)")
    p.add_argument("--data", type=Path, help="scene folder (NeRF-synthetic or Instant-NGP)")
    p.add_argument("--fast", action="store_true", help="short run: ~1 min on a GPU")
    p.add_argument("--model", default="ngp", choices=["ngp"])
    p.add_argument("--steps", type=int, help="training steps (default: preset)")
    p.add_argument("--max-seconds", type=float, help="stop training after this much time")
    p.add_argument("--batch-rays", type=int, help="rays per step (default: preset)")
    p.add_argument("--downscale", type=int, help="image downscale factor (default: preset)")
    p.add_argument("--backend", default="auto", help="backend for every op")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-views", type=int, help="test views to evaluate (default: preset)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<scene>-<model>-<time>)")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> dict:
    """The paper's recipe on a GPU; a scaled-down one on a CPU (announced)."""
    gpu = args.device.startswith("cuda")
    if gpu:
        preset = dict(steps=35000, max_seconds=300.0, batch_rays=2**12, downscale=1,
                      eval_views=200, log2_hashmap_size=19, grid_resolution=128, decay=0.95,
                      step_divisor=1024)
        if args.fast:
            preset.update(max_seconds=60.0, eval_views=20, downscale=2)
    else:
        preset = dict(steps=1500, max_seconds=420.0, batch_rays=1024, downscale=8,
                      eval_views=8, log2_hashmap_size=17, grid_resolution=64, decay=0.8,
                      step_divisor=256)
        if not args.fast:
            preset.update(steps=10000, max_seconds=3600.0, downscale=4, eval_views=50)
    for key in ("steps", "max_seconds", "batch_rays", "downscale", "eval_views"):
        if getattr(args, key, None) is not None:
            preset[key] = getattr(args, key)
    return preset


def find_scene(args: argparse.Namespace, downscale: int) -> tuple[Path, int, bool]:
    """-> (folder, downscale to load with, whether it is the built-in scene)."""
    if args.data is not None:
        return args.data, downscale, False
    real = Path(os.environ.get("NERFX_DATA", "data")) / "nerf_synthetic" / args.scene
    if (real / "transforms_train.json").is_file():
        return real, downscale, False
    if args.scene != "lego":
        raise SystemExit(f"scene {args.scene!r} not found at {real}; pass --data PATH")
    size = 800 // downscale
    print(f"nerfx: no NeRF-synthetic lego at {real}; using the built-in lego scene "
          f"({size}x{size}, generated once)", flush=True)
    return lego.generate(size), 1, True


def training_state(model, grid, optimizer, step: int, elapsed: float,
                   clock_psnr: dict[int, float]) -> dict:
    """What a checkpoint holds: tensors and plain values only (loads with weights_only=True)."""
    return {"model": model.state_dict(), "grid": grid.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed,
            "clock_psnr": json.dumps(clock_psnr)}


def save_checkpoint(path: Path, payload: dict) -> None:
    """Writes atomically: a killed run leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model, grid, scene: Scene, views: list[int], step_size: float, backend: str,
             out_dir: Path | None = None) -> tuple[float, float]:
    """Mean PSNR and SSIM over test views, on white, rendered in chunks of rays."""
    device = grid.bitfield.device
    white = torch.ones(3, device=device)
    scores = []
    for view in views:
        h, w = scene.height, scene.width
        v, u = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                              indexing="ij")
        pose = scene.poses[view].to(device).expand(h * w, 4, 4)
        intr = scene.intrinsics[view].to(device).expand(h * w, 4)
        o, d = camera_rays(pose, intr, u.flatten().float(), v.flatten().float())
        colors, depths = [], []
        for i in range(0, h * w, 2**14):
            out = render_rays_compacting(o[i:i + 2**14], d[i:i + 2**14], grid, model,
                                         step_size=step_size, background=white,
                                         backend=backend)
            colors.append(out.color)
            depths.append(out.depth)
        pred = torch.cat(colors).clamp(0, 1).reshape(h, w, 3).cpu()
        truth = composite_on(scene.images[view], torch.ones(3))
        scores.append((psnr(pred, truth), ssim(pred, truth)))
        if out_dir is not None:
            side = torch.cat([pred, truth], dim=1)
            Image.fromarray((side.numpy() * 255 + 0.5).astype(np.uint8)).save(
                out_dir / f"test_{view:03d}.png")
            depth = torch.cat(depths).reshape(h, w).cpu()
            depth = (depth / depth.max().clamp(min=1e-6)).numpy()
            Image.fromarray((depth * 255).astype(np.uint8)).save(out_dir / f"depth_{view:03d}.png")
    return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))


def train(args: argparse.Namespace) -> dict:
    if args.resume is not None:  # the saved arguments, with new --steps / --max-seconds
        run = args.resume
        saved = json.loads((run / "config.json").read_text())["args"]
        overrides = {k: getattr(args, k) for k in ("steps", "max_seconds")
                     if getattr(args, k) is not None}
        args = argparse.Namespace(**saved)
        args.data = Path(args.data) if args.data else None
        args.__dict__.update(overrides, resume=run, out=run)
    cfg = recipe(args)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    folder, load_downscale, builtin = find_scene(args, cfg["downscale"])
    if not device.type == "cuda":
        print(f"nerfx: CPU recipe: {cfg['batch_rays']} rays/step, hash table 2^"
              f"{cfg['log2_hashmap_size']}, grid {cfg['grid_resolution']}^3, images 1/"
              f"{cfg['downscale']}, at most {cfg['steps']} steps / {cfg['max_seconds']:.0f} s",
              flush=True)
    train_set = load_scene(folder, "train", downscale=load_downscale)
    test_set = load_scene(folder, "test", downscale=load_downscale)
    out = args.out or Path("runs") / f"{args.scene}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "renders").mkdir(parents=True, exist_ok=True)
    config = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "recipe": cfg, "scene": str(folder), "builtin_scene": builtin}
    (out / "config.json").write_text(json.dumps(config, indent=1))

    aabb = [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]
    model = InstantNGP(aabb, NGPConfig(log2_hashmap_size=cfg["log2_hashmap_size"],
                                       backend=args.backend)).to(device)
    grid = OccupancyGrid(aabb, resolution=cfg["grid_resolution"], decay=cfg["decay"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    step, elapsed, clock_psnr = 0, 0.0, {}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        grid.load_state_dict(state["grid"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        clock_psnr = {int(k): v for k, v in json.loads(state["clock_psnr"]).items()}
        print(f"nerfx: resumed {out} at step {step} ({elapsed:.1f} s trained)", flush=True)
    grid.mark_unseen_empty(train_set.poses, tuple(train_set.intrinsics[0, :2].tolist()),
                           tuple(train_set.intrinsics[0, 2:].tolist()),
                           (train_set.width, train_set.height))
    step_size = math.sqrt(3) * 3 / cfg["step_divisor"]
    images = train_set.images.to(device)
    poses, intrinsics = train_set.poses.to(device), train_set.intrinsics.to(device)
    n, h, w = len(train_set), train_set.height, train_set.width
    gen = torch.Generator(device).manual_seed(args.seed + step)
    views = list(range(0, len(test_set), max(len(test_set) // cfg["eval_views"], 1)))
    views = views[:cfg["eval_views"]]
    samples_total = 0
    bar = tqdm(total=cfg["steps"], initial=step, desc="train", unit="step")
    while step < cfg["steps"] and elapsed < cfg["max_seconds"]:
        tick = time.perf_counter()
        pick = torch.randint(0, n * h * w, (cfg["batch_rays"],), device=device, generator=gen)
        cam, pix = pick // (h * w), pick % (h * w)
        o, d = camera_rays(poses[cam], intrinsics[cam], (pix % w).float(), (pix // w).float())
        background = torch.rand(cfg["batch_rays"], 3, device=device, generator=gen)
        target = composite_on(images[cam, pix // w, pix % w], background)
        grid.update(step, model.density, generator=gen)
        rendered, n_samples = render_rays(model, grid, o, d, step_size=step_size,
                                          background=background, backend=args.backend)
        loss = torch.nn.functional.mse_loss(rendered.color, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 20000 and step % 10000 == 0:
            for group in optimizer.param_groups:
                group["lr"] *= 0.33
        step += 1
        samples_total += n_samples
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - tick
        for mark in CLOCK_MARKS:
            if mark not in clock_psnr and elapsed >= mark:
                clock_psnr[mark] = evaluate(model, grid, test_set, views[:2], step_size,
                                            args.backend)[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{-10 * math.log10(loss.item()):.2f}",
                        spr=f"{n_samples / cfg['batch_rays']:.0f}", t=f"{elapsed:.0f}s")
        if step % 250 == 0:
            save_checkpoint(checkpoint, training_state(model, grid, optimizer, step, elapsed,
                                                       clock_psnr))
    bar.close()
    save_checkpoint(checkpoint, training_state(model, grid, optimizer, step, elapsed, clock_psnr))
    test_psnr, test_ssim = evaluate(model, grid, test_set, views, step_size, args.backend,
                                    out / "renders")
    metrics = {
        "scene": args.scene, "model": args.model, "builtin_scene": builtin, "steps": step,
        "train_seconds": round(elapsed, 2), "test_psnr": round(test_psnr, 3),
        "test_ssim": round(test_ssim, 4), "eval_views": len(views),
        "samples_per_second": round(samples_total / max(elapsed, 1e-9)), "device": str(device),
        "backends": {op: REG.describe(device, (torch.float32,))
                     for op, REG in _dispatch.REGISTRY.items()},
        "test_psnr_at_seconds": {str(k): round(v, 3) for k, v in sorted(clock_psnr.items())},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"{args.scene} {args.model}: {step} steps, {elapsed:.1f} s training, test PSNR "
          f"{test_psnr:.2f} dB (SSIM {test_ssim:.3f}) -> {out}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
