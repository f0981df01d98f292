"""Training a radiance field (nerfx/trainers/ngp.py, nerf.py) on a scene, as a nerfx.loop Task.

The data is a scene: a NeRF-synthetic or Instant-NGP folder, a NeRF-synthetic scene by name
under $NERFX_DATA/nerf_synthetic/, nerfx's built-in lego (generated once when no real one is
found) or its built-in room (a capture-like scene: nerfx.data.room). A step draws random rays,
takes the pipeline's optimiser step (mixed precision where the settings say) and, for
Instant-NGP, adapts the ray count to the samples budget. Test PSNR is
measured at the paper's clock marks (outside training time); at the end the test views are
scored and pictured and a turntable video is rendered.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from nerfx.data import lego, room
from nerfx.data.rays import TrainingRays
from nerfx.data.scenes import Scene, SceneError, image_size, load_scene
from nerfx.loop import LoopState
from nerfx.models.ema import EMA
from nerfx.models.pipelines import (
    PIPELINES,
    Pipeline,
    TrainOutput,
    build_pipeline,
    trained_pipeline,
)
from nerfx.ops.adam import SkipZeroAdam
from nerfx.render.evaluate import evaluate_views, mean_scores
from nerfx.render.views import render_turntable
from nerfx.runs import data_name

CLOCK_MARKS = (1, 5, 15, 60, 300)  # seconds of training at which the paper reports test PSNR
CLOCK_VIEWS = 8  # test views evaluated at each clock mark (the final evaluation uses eval_views)
# Settings every radiance-field preset holds beside its own.
COMMON_PRESET = dict(precision="auto",  # "auto": mixed (fp16) on a GPU, fp32 on a CPU
                     max_image_side=None,  # pixels: a larger downscale where images exceed it
                     test_every=8,      # Instant-NGP folders: every 8th image is a test view
                     save_every=250)    # steps between checkpoints


def clock_views(views: list[int], n: int = CLOCK_VIEWS) -> list[int]:
    """n of the evaluated test views, spread evenly over them."""
    return views[::max(len(views) // n, 1)][:n]


def records_samples_at(step: int) -> bool:
    """Steps whose samples per ray metrics.json records: every 10 to 200, every 100 to 2000,
    then every 1000 (the occupancy grid prunes in the first few hundred steps)."""
    return step % (10 if step <= 200 else 100 if step <= 2000 else 1000) == 0


def find_scene(data: str, downscale: int, max_side: int | None = None
               ) -> tuple[Path, int, bool]:
    """data: a scene folder, a NeRF-synthetic scene's name, or a built-in scene's name (lego,
    room). -> (folder, downscale to load with, whether it is a built-in scene). The built-in
    scenes are generated once at the resolution they train at; a folder's images are read at
    `downscale`, doubled while their long side is over max_side pixels (None: no limit)."""
    path = Path(data)
    real = Path(os.environ.get("NERFX_DATA", "data")) / "nerf_synthetic" / data
    if path.is_dir() or len(path.parts) > 1 or (real / "transforms_train.json").is_file():
        folder = path if path.is_dir() or len(path.parts) > 1 else real
        return folder, fitted_downscale(folder, downscale, max_side), False
    if data == "room":
        width = max(room.FULL_WIDTH // downscale, 1)
        print(f"nerfx: the built-in room scene ({width} px wide, generated once)", flush=True)
        return room.generate(width), 1, True
    if data != "lego":
        raise SceneError(f"scene {data!r} not found at {real} (nor a folder {path}); pass "
                         "--data PATH, or --scene lego or room (built in)")
    size = max(800 // downscale, 1)
    print(f"nerfx: no NeRF-synthetic lego at {real}; using the built-in lego scene "
          f"({size}x{size}, generated once)", flush=True)
    return lego.generate(size), 1, True


def pipeline_args(model: str, settings: dict, scene: Scene) -> dict:
    """The plain dict that builds the pipeline (config.json's "pipeline")."""
    pipeline = PIPELINES[model]
    args = {"name": model, "aabb": list(scene.aabb),
            "cascades": int(math.log2(scene.aabb_scale)) + 1}
    return args | pipeline.scene_args(scene.aabb_scale, settings.get("step_divisor")) | \
        {key: settings[key] for key in pipeline.BUILD_SETTINGS}


def camera_config(train_set: Scene, test_set: Scene) -> tuple[dict, dict]:
    """-> (the test camera, a turntable around the scene at the training cameras' distance)."""
    center = torch.tensor(train_set.aabb).view(2, 3).mean(0)
    radius = float((train_set.poses[:, :3, 3] - center).norm(dim=-1).mean())
    return ({"width": test_set.width, "height": test_set.height,
             "intrinsics": test_set.intrinsics[0].tolist()},
            {"radius": radius, "center": center.tolist(), "elevation_deg": 30.0})


def fitted_downscale(folder: Path, downscale: int, max_side: int | None) -> int:
    """downscale, doubled until the folder's images are at most max_side pixels on their long
    side (said on one line when it changes)."""
    if max_side is None:
        return downscale
    width, height = image_size(folder)
    fitted = downscale
    while max(width, height) // fitted > max_side:
        fitted *= 2
    if fitted != downscale:
        print(f"nerfx: images {width}x{height} read at 1/{fitted} ({width // fitted}x"
              f"{height // fitted}): this preset's images are at most {max_side} px on their "
              "long side (--downscale N to choose)", flush=True)
    return fitted


def scaled_camera(camera: dict, downscale: int) -> dict:
    """config.json's camera at 1/downscale of its size (the lens, on normalised coordinates,
    unchanged)."""
    if downscale <= 1:
        return camera
    intrinsics = list(camera["intrinsics"])
    intrinsics[:4] = [v / downscale for v in intrinsics[:4]]
    return {"width": max(camera["width"] // downscale, 1),
            "height": max(camera["height"] // downscale, 1), "intrinsics": intrinsics}


def evaluate(pipeline: Pipeline, scene: Scene, views: list[int], out_dir: Path | None = None
             ) -> tuple[float, float]:
    """Mean PSNR and SSIM over test views, on white; with out_dir, writes test_<view>.png (the
    prediction beside the truth) and depth_<view>.png."""
    files = {"test": "vs_gt", "depth": "depth"} if out_dir is not None else None
    return mean_scores(evaluate_views(pipeline, scene, views, out_dir, files))


def make_optimizer(pipeline: Pipeline) -> torch.optim.Optimizer:
    """Adam with the pipeline's settings over its parameter groups, fused (one vectorised kernel
    for all parameters rather than a loop over tensors) where torch supports it. Groups marked
    skip_zero (Instant-NGP's hash table) skip the entries whose gradient is exactly 0, each
    bias-corrected by its own step count (paper sec. 4; tiny-cuda-nn's Adam): SkipZeroAdam.
    NeRF keeps torch's Adam."""
    settings = dict(lr=pipeline.lr, betas=pipeline.betas, eps=pipeline.eps)
    groups = pipeline.param_groups()
    make = SkipZeroAdam if any(g.get("skip_zero") for g in groups) else torch.optim.Adam
    try:
        return make(groups, fused=True, **settings)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return make(groups, **settings)


def optimize_step(pipeline: Pipeline, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, batch: tuple[torch.Tensor, ...], step: int,
                  generator: torch.Generator, autocast_dtype: torch.dtype | None = None
                  ) -> TrainOutput:
    """One step: the schedule's learning rate, forward (autocast when a dtype is given), scaled
    backward, Adam. batch: (origins, directions, backgrounds, targets), [n_rays, 3] each."""
    for group in optimizer.param_groups:
        group["lr"] = pipeline.lr * pipeline.lr_factor(step)
    device_type = batch[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        result = pipeline.train_forward(*batch, step, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(result.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return result


class RadianceFieldTask:
    """A radiance-field pipeline's training as a nerfx.loop Task. Where the pipeline keeps an EMA
    of its weights (Instant-NGP), `model` is the averaged copy that evaluation and rendering
    use."""

    unit = "rays"

    def __init__(self, pipeline: Pipeline, config: dict, train_set: Scene, test_set: Scene,
                 device: torch.device):
        settings = config["settings"]
        self.pipeline, self.config, self.settings = pipeline, config, settings
        self.train_set, self.test_set, self.device = train_set, test_set, device
        self.rays = TrainingRays(train_set, device)
        # Rays at random points of their pixels model a sensor that averages over each pixel
        # (photos; the built-in room, supersampled). The built-in lego's images are point
        # samples at pixel centres: there the rays stay at the centres (1.5 dB better on it at
        # 2000 steps, benches/RESULTS.md).
        self.jitter = pipeline.jitter_pixels and not config.get("point_sampled", False)
        every = max(len(test_set) // settings["eval_views"], 1)
        self.views = list(range(0, len(test_set), every))[:settings["eval_views"]]
        self.optimizer = make_optimizer(pipeline)
        self.ema = EMA(pipeline, pipeline.ema_decay, warmup=False, debias=True) \
            if pipeline.ema_decay else None
        mixed = settings["precision"] == "mixed"
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.autocast = amp_dtype if mixed else None
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=mixed and amp_dtype == torch.float16)
        self.generator = torch.Generator(device).manual_seed(config["seed"])
        self.batch_rays = self.items_per_step = settings["batch_rays"]
        self.clock_psnr: dict[int, float] = {}  # seconds trained -> test PSNR
        self.samples_per_ray: dict[int, float] = {}  # step -> field samples trained per ray
        self.marched_per_ray: dict[int, float] = {}  # step -> samples marched per ray
        self.samples_total, self.step_seconds = 0, 0.0  # this process's, for samples/s

    def begin(self) -> None:
        """Cells that no training camera sees are empty for good (after any resume)."""
        scene = self.train_set
        self.pipeline.prepare(scene.poses, scene.intrinsics, scene.width, scene.height)

    def train_step(self, step: int) -> dict[str, float | torch.Tensor]:
        tick = time.perf_counter()
        n_rays = self.items_per_step = self.batch_rays
        batch = self.rays.sample(n_rays, self.generator, self.pipeline.random_background,
                                 self.jitter)
        result = optimize_step(self.pipeline, self.optimizer, self.scaler, batch, step,
                               self.generator, self.autocast)
        if self.ema is not None:
            self.ema.update(self.pipeline)
        self.samples_total += result.n_samples
        if records_samples_at(step + 1) or step == 0:
            self.samples_per_ray[step + 1] = round(result.n_samples / n_rays, 1)
            if result.n_marched is not None:  # before compaction
                self.marched_per_ray[step + 1] = round(result.n_marched / n_rays, 1)
        self.batch_rays = self.pipeline.next_batch_rays(n_rays, result.n_samples,
                                                        self.settings["batch_samples"],
                                                        self.settings.get("max_batch_rays"))
        # The losses stay on the device (the loop reads them when its bar redraws): no wait here.
        # The next step's march waits for this one (it reads its sample count), so the clock
        # runs at most one step ahead of the device.
        self.step_seconds += time.perf_counter() - tick
        mse = result.mse.detach()
        return {"loss": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
                "samples/ray": result.n_samples / n_rays}

    @property
    def model(self) -> Pipeline:
        """What evaluation and rendering use: the EMA copy where there is one."""
        return self.ema.model if self.ema is not None else self.pipeline

    def after_step(self, state: LoopState) -> None:
        for mark in CLOCK_MARKS:
            if mark not in self.clock_psnr and state.seconds >= mark:
                # PSNR only (no SSIM), on the preset's few views, with the compacting renderer.
                views = clock_views(self.views, self.settings.get("clock_views", CLOCK_VIEWS))
                scores = evaluate_views(self.model, self.test_set, views, with_ssim=False)
                self.clock_psnr[mark] = mean_scores(scores)[0]

    def snapshot(self, run: Path, step: int) -> None:
        """Pictures come at the end (finish)."""

    def finish(self, run: Path) -> dict:
        """Scores and pictures of the test views, the turntable video; metrics.json's entries."""
        model = self.model.eval()
        (run / "renders").mkdir(parents=True, exist_ok=True)
        test_psnr, test_ssim = evaluate(model, self.test_set, self.views, run / "renders")
        video = None
        if self.settings["video_frames"] > 0:
            camera = scaled_camera(self.config["camera"], self.settings.get("video_downscale", 1))
            video = render_turntable(model, camera, self.config["turntable"],
                                     self.settings["video_frames"], run / "turntable")
        samples_per_second = (round(self.samples_total / self.step_seconds)
                              if self.samples_total else None)
        return {
            "scene": data_name(self.config["data"]),
            "builtin_scene": self.config["builtin_scene"], "test_psnr": round(test_psnr, 3),
            "test_ssim": round(test_ssim, 4), "eval_views": len(self.views),
            "samples_per_second": samples_per_second, "precision": self.settings["precision"],
            "test_psnr_at_seconds": {str(k): round(v, 3)
                                     for k, v in sorted(self.clock_psnr.items())},
            "samples_per_ray_at_step": {str(k): v for k, v in sorted(self.samples_per_ray.items())},
            "marched_per_ray_at_step": {str(k): v for k, v in sorted(self.marched_per_ray.items())},
            "video": video.name if video else None,
        }

    @staticmethod
    def summary(metrics: dict) -> str:
        return f"test PSNR {metrics['test_psnr']:.2f} dB (SSIM {metrics['test_ssim']:.3f})"

    def state_dict(self) -> dict:  # tensors and plain values only: loads with weights_only=True
        return {"pipeline": self.pipeline.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": self.generator.get_state(),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                "batch_rays": self.batch_rays, "clock_psnr": json.dumps(self.clock_psnr),
                "samples_per_ray": json.dumps(self.samples_per_ray),
                "marched_per_ray": json.dumps(self.marched_per_ray)}

    def load_state_dict(self, state: dict) -> None:
        self.pipeline.load_state_dict(state["pipeline"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["rng"].cpu())
        self.batch_rays = int(state["batch_rays"])
        self.clock_psnr = {int(k): v for k, v in json.loads(state["clock_psnr"]).items()}
        self.samples_per_ray = {int(k): v for k, v in json.loads(state["samples_per_ray"]).items()}
        self.marched_per_ray = {int(k): v for k, v in json.loads(state["marched_per_ray"]).items()}


def make_task(config: dict, device: torch.device) -> RadianceFieldTask:
    """Loads the scene (found or generated at the first run, config's afterwards), resolves the
    device-dependent settings and records the scene, pipeline and cameras in config."""
    settings, model = config["settings"], config["model"]
    if settings["precision"] == "auto":
        settings["precision"] = "mixed" if device.type == "cuda" else "fp32"
    settings["batch_rays"] = PIPELINES[model].first_batch_rays(settings)
    if "scene" in config:        # a resumed run: the folder it trained on
        folder, load_downscale = Path(config["scene"]), config["load_downscale"]
    else:
        folder, load_downscale, builtin = find_scene(config["data"], settings["downscale"],
                                                     settings["max_image_side"])
        if not builtin:
            settings["downscale"] = load_downscale     # as fitted to max_image_side
        config.update(scene=str(folder), load_downscale=load_downscale, builtin_scene=builtin)
    if device.type != "cuda":
        sizes = ", ".join(f"{k} {settings[k]}"
                          for k in ("batch_rays", *PIPELINES[model].BUILD_SETTINGS))
        print(f"nerfx: CPU recipe for {model}: {sizes}, images 1/{settings['downscale']}, at "
              f"most {settings['steps']} steps / {settings['max_seconds']:.0f} s", flush=True)
    scenes = [load_scene(folder, split, downscale=load_downscale,
                         test_every=settings["test_every"]) for split in ("train", "test")]
    config.setdefault("pipeline", pipeline_args(model, settings, scenes[0]))
    # Pixels that are point samples (the scene says so) train at their centres, not jittered.
    config.setdefault("point_sampled", scenes[0].point_sampled)
    # The scene's extent as Instant-NGP states it (given by transforms.json, or chosen for a
    # COLMAP model), and where a COLMAP model's world was moved to (nerfx.data.colmap).
    config.setdefault("aabb_scale", scenes[0].aabb_scale)
    if scenes[0].source_transform is not None:
        config.setdefault("source_transform", scenes[0].source_transform)
    config["camera"], config["turntable"] = camera_config(*scenes)
    pipeline = build_pipeline(config["pipeline"]).to(device)
    return RadianceFieldTask(pipeline, config, *scenes, device)


def load_trained(config: dict, task_state: dict, device: torch.device | str) -> Pipeline:
    """The trained pipeline in eval mode: the EMA weights where training kept them."""
    return trained_pipeline(config["pipeline"], task_state, device)
