"""`python -m nerfx.train --scene lego --fast`: train a radiance field, evaluate it, render it.

Models: `--model ngp` (Instant-NGP, default) and `--model nerf` (the original NeRF). Without a
real NeRF-synthetic lego (`--data PATH` or $NERFX_DATA/nerf_synthetic/lego), nerfx generates its
built-in lego scene and says so. On a CPU a scaled-down recipe is chosen and announced. The run
folder holds config.json, metrics.json, test renders beside the ground truth, depth maps, a
turntable video and checkpoint.pt (written atomically; `--resume RUN` continues the run, random
state included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from nerfx import trainers
from nerfx.data import lego
from nerfx.data.rays import TrainingRays
from nerfx.data.scenes import Scene, SceneError, load_scene
from nerfx.models.pipelines import (
    MODELS,
    PIPELINES,
    RUN_KEYS,
    build_pipeline,
    make_optimizer,
    optimize_step,
)
from nerfx.ops import chosen_backends, use_backend
from nerfx.render.evaluate import evaluate_views, mean_scores
from nerfx.render.views import render_turntable
from nerfx.runs import (
    CHECKPOINT,
    CONFIG,
    RunError,
    load_checkpoint,
    read_config,
    save_checkpoint,
    write_json,
)

CLOCK_MARKS = (1, 5, 15, 60, 300)  # seconds of training at which the paper reports test PSNR
SAVE_EVERY = 250  # steps between checkpoints


def on_curve(step: int) -> bool:
    """Steps whose samples per ray metrics.json records: every 10 to 200, every 100 to 2000,
    then every 1000 (the occupancy grid prunes in the first few hundred steps)."""
    return step % (10 if step <= 200 else 100 if step <= 2000 else 1000) == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.train", description=__doc__.split("\n")[0])
    p.add_argument("--scene", default="lego", help="scene name (lego is built in)")
    p.add_argument("--data", type=Path, help="scene folder (NeRF-synthetic or Instant-NGP)")
    p.add_argument("--test-every", type=int, default=8,
                   help="Instant-NGP folders: hold out every n-th image for testing")
    p.add_argument("--fast", action="store_true", help="short run: ~1 min on a GPU")
    p.add_argument("--model", default="ngp", choices=MODELS)
    p.add_argument("--steps", type=int, help="training steps (default: preset)")
    p.add_argument("--max-seconds", type=float, help="stop training after this much time")
    p.add_argument("--batch-samples", type=int,
                   help="field samples per step; ngp adapts its ray count to it (GPU: 2^18)")
    p.add_argument("--batch-rays", type=int, help="rays per step (first step, with ngp)")
    p.add_argument("--downscale", type=int, help="image downscale factor (default: preset)")
    p.add_argument("--precision", choices=["auto", "fp32", "mixed"], default="auto",
                   help="mixed: fp16 autocast with loss scaling on a GPU, bf16 on a CPU "
                        "(auto: mixed on a GPU)")
    p.add_argument("--backend", default="auto",
                   help="backend for every op that has it (a run setting: nerfx.ops.use_backend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-views", type=int, help="test views to evaluate (default: preset)")
    p.add_argument("--video-frames", type=int, help="turntable frames (0: no video)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<scene>-<model>-<time>)")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def recipe(args: argparse.Namespace) -> dict:
    """The pipeline's preset for the device (GPU: the paper's recipe; CPU: a scaled-down one,
    announced), with the command line's overrides."""
    pipeline = PIPELINES[args.model]
    gpu = args.device.startswith("cuda")
    preset = pipeline.preset("cuda" if gpu else "cpu", args.fast)
    for key in RUN_KEYS:
        if getattr(args, key, None) is not None:
            preset[key] = getattr(args, key)
    preset["batch_rays"] = pipeline.first_batch_rays(preset)
    preset["precision"] = ("mixed" if gpu else "fp32") if args.precision == "auto" \
        else args.precision
    return preset


def model_spec(args: argparse.Namespace, cfg: dict, scene: Scene) -> dict:
    """The plain dict that rebuilds the model (saved in config.json)."""
    spec = {"name": args.model, "aabb": list(scene.aabb),
            "cascades": int(math.log2(scene.aabb_scale)) + 1}
    return spec | {key: cfg[key] for key in PIPELINES[args.model].SPEC_KEYS}


def find_scene(args: argparse.Namespace, downscale: int) -> tuple[Path, int, bool]:
    """-> (folder, downscale to load with, whether it is the built-in scene)."""
    if args.data is not None:
        return args.data, downscale, False
    real = Path(os.environ.get("NERFX_DATA", "data")) / "nerf_synthetic" / args.scene
    if (real / "transforms_train.json").is_file():
        return real, downscale, False
    if args.scene != "lego":
        raise SystemExit(f"scene {args.scene!r} not found at {real}; pass --data PATH")
    size = max(800 // downscale, 1)
    print(f"nerfx: no NeRF-synthetic lego at {real}; using the built-in lego scene "
          f"({size}x{size}, generated once)", flush=True)
    return lego.generate(size), 1, True


def camera_config(train_set: Scene, test_set: Scene) -> tuple[dict, dict]:
    """-> (the test camera, a turntable around the scene at the training cameras' distance)."""
    center = torch.tensor(train_set.aabb).view(2, 3).mean(0)
    radius = float((train_set.poses[:, :3, 3] - center).norm(dim=-1).mean())
    return ({"width": test_set.width, "height": test_set.height,
             "intrinsics": test_set.intrinsics[0].tolist()},
            {"radius": radius, "center": center.tolist(), "elevation_deg": 30.0})


def evaluate(pipeline, scene: Scene, views: list[int], out_dir: Path | None = None
             ) -> tuple[float, float]:
    """Mean PSNR and SSIM over test views, on white; with out_dir, writes test_<view>.png (the
    prediction beside the truth) and depth_<view>.png."""
    files = {"test": "vs_gt", "depth": "depth"} if out_dir is not None else None
    return mean_scores(evaluate_views(pipeline, scene, views, out_dir, files))


def resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """The saved arguments of the run being resumed, with new --steps / --max-seconds."""
    run = args.resume
    saved = read_config(run)["args"]
    overrides = {k: getattr(args, k) for k in ("steps", "max_seconds")
                 if getattr(args, k) is not None}
    resumed = argparse.Namespace(**saved)
    resumed.data = Path(resumed.data) if resumed.data else None
    resumed.__dict__.update(overrides, resume=run, out=run)
    return resumed


def train(args: argparse.Namespace) -> dict:
    if args.resume is not None:
        args = resumed_args(args)
    cfg = recipe(args)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    folder, load_downscale, builtin = find_scene(args, cfg["downscale"])
    if device.type != "cuda":
        size = ", ".join(f"{k} {cfg[k]}" for k in ("batch_rays", "log2_hashmap_size",
                                                    "grid_resolution", "n_coarse", "n_fine")
                         if k in cfg)
        print(f"nerfx: CPU recipe for {args.model}: {size}, images 1/{cfg['downscale']}, at "
              f"most {cfg['steps']} steps / {cfg['max_seconds']:.0f} s", flush=True)
    train_set = load_scene(folder, "train", downscale=load_downscale, test_every=args.test_every)
    test_set = load_scene(folder, "test", downscale=load_downscale, test_every=args.test_every)
    out = args.out or Path("runs") / f"{args.scene}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "renders").mkdir(parents=True, exist_ok=True)
    spec = model_spec(args, cfg, train_set)
    camera, turntable = camera_config(train_set, test_set)
    config = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "recipe": cfg, "model": spec, "camera": camera, "turntable": turntable,
              "scene": str(folder), "load_downscale": load_downscale, "builtin_scene": builtin}
    write_json(out / CONFIG, config)

    pipeline = build_pipeline(spec).to(device)
    optimizer = make_optimizer(pipeline)
    mixed = cfg["precision"] == "mixed"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=mixed and amp_dtype == torch.float16)
    gen = torch.Generator(device).manual_seed(args.seed)
    step, elapsed, clock_psnr, batch_rays = 0, 0.0, {}, cfg["batch_rays"]
    samples_per_ray: dict[int, float] = {}
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, device)
        pipeline.load_state_dict(state["pipeline"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["rng"].cpu())
        step, elapsed, batch_rays = int(state["step"]), float(state["elapsed"]), \
            int(state["batch_rays"])
        clock_psnr = {int(k): v for k, v in json.loads(state["clock_psnr"]).items()}
        samples_per_ray = {int(k): v for k, v in
                           json.loads(state.get("samples_per_ray", "{}")).items()}
        print(f"nerfx: resumed {out} at step {step} ({elapsed:.1f} s trained)", flush=True)

    def state_now() -> dict:  # tensors and plain values only: loads with weights_only=True
        return {"pipeline": pipeline.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "rng": gen.get_state(), "step": step,
                "elapsed": elapsed, "batch_rays": batch_rays,
                "clock_psnr": json.dumps(clock_psnr),
                "samples_per_ray": json.dumps(samples_per_ray)}

    pipeline.prepare(train_set.poses, train_set.intrinsics, train_set.width, train_set.height)
    rays = TrainingRays(train_set, device)
    views = list(range(0, len(test_set), max(len(test_set) // cfg["eval_views"], 1)))
    views = views[:cfg["eval_views"]]
    samples_total, seconds_this_run = 0, 0.0
    bar = tqdm(total=cfg["steps"], initial=step, desc=f"train {args.model}", unit="step")
    while step < cfg["steps"] and elapsed < cfg["max_seconds"]:
        tick = time.perf_counter()
        n_rays = batch_rays
        batch = rays.sample(n_rays, gen, pipeline.random_background)
        result = optimize_step(pipeline, optimizer, scaler, batch, step, gen,
                               amp_dtype if mixed else None)
        step += 1
        samples_total += result.n_samples
        if on_curve(step) or step == 1:
            samples_per_ray[step] = round(result.n_samples / n_rays, 1)
        batch_rays = pipeline.next_batch_rays(batch_rays, result.n_samples,
                                              cfg["batch_samples"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - tick
        seconds_this_run += took
        elapsed += took
        for mark in CLOCK_MARKS:  # evaluation time is not training time
            if mark not in clock_psnr and elapsed >= mark:
                clock_psnr[mark] = evaluate(pipeline, test_set, views[:2])[0]
        mse = result.mse.item()
        bar.update(1)
        bar.set_postfix(loss=f"{mse:.4f}", psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}",
                        rays=n_rays, rays_per_s=f"{n_rays / took:.0f}",
                        spr=f"{result.n_samples / n_rays:.0f}", t=f"{elapsed:.0f}s")
        if step % SAVE_EVERY == 0:
            save_checkpoint(checkpoint, state_now())
    bar.close()
    save_checkpoint(checkpoint, state_now())

    test_psnr, test_ssim = evaluate(pipeline.eval(), test_set, views, out / "renders")
    video = None
    if cfg["video_frames"] > 0:
        video = render_turntable(pipeline, camera, turntable, cfg["video_frames"],
                                 out / "turntable")
    metrics = {
        "scene": args.scene, "model": args.model, "builtin_scene": builtin, "steps": step,
        "train_seconds": round(elapsed, 2), "test_psnr": round(test_psnr, 3),
        "test_ssim": round(test_ssim, 4), "eval_views": len(views),
        "samples_per_second": round(samples_total / seconds_this_run) if samples_total else None,
        "device": str(device), "precision": cfg["precision"],
        "backends": chosen_backends(device),
        "test_psnr_at_seconds": {str(k): round(v, 3) for k, v in sorted(clock_psnr.items())},
        "samples_per_ray_at_step": {str(k): v for k, v in sorted(samples_per_ray.items())},
        "video": video.name if video else None,
    }
    write_json(out / "metrics.json", metrics)
    print(f"{args.scene} {args.model}: {step} steps, {elapsed:.1f} s training, test PSNR "
          f"{test_psnr:.2f} dB (SSIM {test_ssim:.3f}) -> {out}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if trainers.handles(argv):      # --model vit|vae|ddpm: the image models' trainer
        return trainers.main(argv)
    try:
        args = parse_args(argv)
        with use_backend(args.backend):
            return train(args)
    except (SceneError, RunError) as exc:  # a bad folder: say which file and why, no traceback
        raise SystemExit(f"nerfx.train: {exc}") from None


if __name__ == "__main__":
    main()
