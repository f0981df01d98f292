"""Training Instant-NGP (Müller et al., 2022) on a scene: its presets; the task is
nerfx.trainers.radiance's, the pipeline nerfx.models.pipelines.InstantNGPPipeline."""

from __future__ import annotations

from nerfx.trainers import radiance

MODEL = "ngp"
DEFAULT_DATA = "lego"  # the NeRF-synthetic lego, or nerfx's built-in one
OPS: tuple[str, ...] = ("hash_encode", "march_rays", "composite_rays", "adam_step")

# The paper's recipe: 2^18 samples per step (paper sec. 5.4; the ray count adapts), T = 2^19,
# a 128^3 grid with decay 0.95 and steps of sqrt(3)/1024 (appendix E.2), instant-ngp's Huber
# loss (src/testbed_nerf.cu); 35k steps (the paper's 5-minute figure).
_GPU = dict(steps=35000, max_seconds=300.0, batch_samples=2**18, batch_rays=2**12,
            downscale=1, eval_views=200, video_frames=120, log2_hashmap_size=19,
            grid_resolution=128, decay=0.95, step_divisor=1024, loss="huber",
            max_batch_rays=None, video_downscale=1, grid_warmup_cells=None, clock_views=8,
            **radiance.COMMON_PRESET)
# 2 CPU cores: a budget of 8192 field samples a step (counted after early termination, as the
# GPU's 2^18) with the ray count following it, from 128 up to 1024 rays (the lego's 1024 once its
# grid prunes; 128-256 in a room full of surfaces); T = 2^17, a 64^3 grid of faster decay and 4x
# coarser steps (and so a 4x cone angle in large scenes: pipelines.InstantNGPPipeline.scene_args),
# at most 65536 cells per warm-up update, L2 loss, images at 1/8 and at most 160 px on their long
# side (a phone's 1920 px photos at 1/16: the evaluation's cost follows the pixels); clock marks
# on 4 test views, the turntable at half size; max_seconds keeps the whole --fast command near
# 2 minutes on a slow or busy machine. The measurements behind each choice: benches/RESULTS.md.
_CPU_FAST = dict(steps=2000, max_seconds=75.0, batch_samples=8192, batch_rays=1024,
                 max_batch_rays=1024, downscale=8, eval_views=8, video_frames=24,
                 video_downscale=2, log2_hashmap_size=17, grid_resolution=64, decay=0.8,
                 step_divisor=256, loss="l2", grid_warmup_cells=65536, clock_views=4,
                 **radiance.COMMON_PRESET | dict(max_image_side=160))
PRESETS = {
    "gpu": _GPU,
    "gpu-fast": _GPU | dict(max_seconds=60.0, eval_views=20, downscale=2, video_frames=60),
    "cpu": _CPU_FAST | dict(steps=10000, max_seconds=3600.0, downscale=4, eval_views=50,
                            video_frames=60, max_image_side=320),
    "cpu-fast": _CPU_FAST,
}

make_task = radiance.make_task
load_trained = radiance.load_trained
