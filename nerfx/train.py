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

from nerfx import trainers
from nerfx.data import lego
from nerfx.data.rays import TrainingRays
from nerfx.data.scenes import Scene, SceneError, load_scene
from nerfx.loop import LoopSettings, LoopState, resume, run_loop
from nerfx.models.ema import EMA
from nerfx.models.pipelines import (
    MODELS,
    PIPELINES,
    RUN_KEYS,
    Pipeline,
    build_pipeline,
    make_optimizer,
    optimize_step,
    regroup_optimizer_state,
)
from nerfx.ops import chosen_backends, use_backend
from nerfx.render.evaluate import evaluate_views, mean_scores
from nerfx.render.views import render_turntable
from nerfx.runs import (
    CHECKPOINT,
    CONFIG,
    RunError,
    add_backend_option,
    read_config,
    write_json,
)

CLOCK_MARKS = (1, 5, 15, 60, 300)  # seconds of training at which the paper reports test PSNR
CLOCK_VIEWS = 8  # test views evaluated at each clock mark (the final evaluation uses eval_views)
SAVE_EVERY = 250  # steps between checkpoints


def clock_views(views: list[int]) -> list[int]:
    """CLOCK_VIEWS of the evaluated test views, spread evenly over them."""
    return views[::max(len(views) // CLOCK_VIEWS, 1)][:CLOCK_VIEWS]


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
    add_backend_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-views", type=int, help="test views to evaluate (default: preset)")
    p.add_argument("--video-frames", type=int, help="turntable frames (0: no video)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<scene>-<model>-<time>)")
    p.add_argument("--resume", type=Path, help="run folder to continue")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile-step", type=int, metavar="N",
                   help="profile steps N to N+2 into RUN/profile/ (trace, operators, host syncs)")
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
    pipeline = PIPELINES[args.model]
    spec = {"name": args.model, "aabb": list(scene.aabb),
            "cascades": int(math.log2(scene.aabb_scale)) + 1}
    return spec | pipeline.scene_spec(scene.aabb_scale) | \
        {key: cfg[key] for key in pipeline.SPEC_KEYS}


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


class RadianceFieldTask:
    """A NeRF pipeline's training as a nerfx.loop Task: random rays, the pipeline's optimiser
    step (mixed precision where the recipe says), Instant-NGP's adaptive ray count, the samples
    per ray along the way, and test PSNR at the paper's clock marks (outside training time).
    Where the pipeline keeps an EMA of its weights (Instant-NGP), `model` is the averaged copy
    that evaluation and rendering use."""

    def __init__(self, pipeline: Pipeline, cfg: dict, rays: TrainingRays, test_set: Scene,
                 views: list[int], seed: int):
        device = next(pipeline.parameters()).device
        self.pipeline, self.cfg, self.rays = pipeline, cfg, rays
        self.test_set, self.views, self.device = test_set, views, device
        self.optimizer = make_optimizer(pipeline)
        self.ema = EMA(pipeline, pipeline.ema_decay, warmup=False, debias=True) \
            if pipeline.ema_decay else None
        mixed = cfg["precision"] == "mixed"
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.autocast = amp_dtype if mixed else None
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=mixed and amp_dtype == torch.float16)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.batch_rays = self.items_per_step = cfg["batch_rays"]
        self.clock_psnr: dict[int, float] = {}  # seconds trained -> test PSNR
        self.samples_per_ray: dict[int, float] = {}  # step -> field samples trained per ray
        self.marched_per_ray: dict[int, float] = {}  # step -> samples marched per ray
        self.samples_total, self.step_seconds = 0, 0.0  # this process's, for samples/s

    def train_step(self, step: int) -> dict[str, float | torch.Tensor]:
        tick = time.perf_counter()
        n_rays = self.items_per_step = self.batch_rays
        batch = self.rays.sample(n_rays, self.generator, self.pipeline.random_background)
        result = optimize_step(self.pipeline, self.optimizer, self.scaler, batch, step,
                               self.generator, self.autocast)
        if self.ema is not None:
            self.ema.update(self.pipeline)
        self.samples_total += result.n_samples
        if on_curve(step + 1) or step == 0:
            self.samples_per_ray[step + 1] = round(result.n_samples / n_rays, 1)
            if result.n_marched is not None:  # before compaction
                self.marched_per_ray[step + 1] = round(result.n_marched / n_rays, 1)
        self.batch_rays = self.pipeline.next_batch_rays(n_rays, result.n_samples,
                                                        self.cfg["batch_samples"])
        # The losses stay on the device (the loop reads them when its bar redraws): no wait here.
        # The next step's march waits for this one (it reads its sample count), so the clock
        # runs at most one step ahead of the device.
        self.step_seconds += time.perf_counter() - tick
        mse = result.mse.detach()
        return {"loss": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
                "spr": result.n_samples / n_rays}

    @property
    def model(self) -> Pipeline:
        """What evaluation and rendering use: the EMA copy where there is one."""
        return self.ema.model if self.ema is not None else self.pipeline

    def after_step(self, state: LoopState) -> None:
        for mark in CLOCK_MARKS:
            if mark not in self.clock_psnr and state.seconds >= mark:
                self.clock_psnr[mark] = evaluate(self.model, self.test_set,
                                                 clock_views(self.views))[0]

    def snapshot(self, run: Path, step: int) -> None:
        """Pictures come at the end (evaluate, turntable)."""

    def state_dict(self) -> dict:  # tensors and plain values only: loads with weights_only=True
        return {"pipeline": self.pipeline.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": self.generator.get_state(),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                "batch_rays": self.batch_rays, "clock_psnr": json.dumps(self.clock_psnr),
                "samples_per_ray": json.dumps(self.samples_per_ray),
                "marched_per_ray": json.dumps(self.marched_per_ray)}

    def load_state_dict(self, state: dict) -> None:
        self.pipeline.load_state_dict(state["pipeline"])
        self.optimizer.load_state_dict(
            regroup_optimizer_state(self.pipeline, self.optimizer, state["optimizer"]))
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            else:  # a run from before the EMA: the average starts from the loaded weights
                self.ema.model.load_state_dict(state["pipeline"])
        self.generator.set_state(state["rng"].cpu())
        self.batch_rays = int(state["batch_rays"])
        self.clock_psnr = {int(k): v for k, v in json.loads(state["clock_psnr"]).items()}
        self.samples_per_ray = {int(k): v for k, v in
                                json.loads(state.get("samples_per_ray", "{}")).items()}
        self.marched_per_ray = {int(k): v for k, v in
                                json.loads(state.get("marched_per_ray", "{}")).items()}

    @staticmethod
    def upgrade_checkpoint(payload: dict) -> dict:
        """Checkpoints of runs before nerfx.loop kept the task's entries at the top level,
        "elapsed" for the seconds and the generator's state as "rng"."""
        task = {k: payload[k] for k in ("pipeline", "optimizer", "scaler", "rng", "batch_rays",
                                        "clock_psnr")}
        task["samples_per_ray"] = payload.get("samples_per_ray", "{}")
        return {"step": payload["step"], "seconds": payload["elapsed"], "task": task,
                "rng": torch.get_rng_state()}


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
        size = ", ".join(f"{k} {cfg[k]}"
                         for k in ("batch_rays", *PIPELINES[args.model].SPEC_KEYS))
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
    views = list(range(0, len(test_set), max(len(test_set) // cfg["eval_views"], 1)))
    views = views[:cfg["eval_views"]]
    task = RadianceFieldTask(pipeline, cfg, TrainingRays(train_set, device), test_set, views,
                             args.seed)
    loop_state = LoopState()
    if (out / CHECKPOINT).is_file():
        loop_state = resume(out, task, device)
        print(f"nerfx: resumed {out} at step {loop_state.step} ({loop_state.seconds:.1f} s "
              f"trained)", flush=True)
    pipeline.prepare(train_set.poses, train_set.intrinsics, train_set.width, train_set.height)
    settings = LoopSettings(steps=cfg["steps"], max_seconds=cfg["max_seconds"],
                            save_every=SAVE_EVERY, unit="rays",
                            profile_step=getattr(args, "profile_step", None))
    loop_state = run_loop(task, out, settings, loop_state, desc=f"train {args.model}")
    step, elapsed = loop_state.step, loop_state.seconds
    clock_psnr, samples_per_ray = task.clock_psnr, task.samples_per_ray
    samples_total, seconds_this_run = task.samples_total, task.step_seconds

    model = task.model.eval()  # the EMA weights where the pipeline keeps them
    test_psnr, test_ssim = evaluate(model, test_set, views, out / "renders")
    video = None
    if cfg["video_frames"] > 0:
        video = render_turntable(model, camera, turntable, cfg["video_frames"],
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
        "marched_per_ray_at_step": {str(k): v for k, v in
                                    sorted(task.marched_per_ray.items())},
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
