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
            grid_warmup_cells=None, clock_views=8, **radiance.COMMON_PRESET)
# 2 CPU cores: 1024 rays a step, T = 2^17, a 64^3 grid of faster decay and 4x coarser steps,
# L2 loss, images at 1/8; max_seconds keeps the whole --fast command near 2 minutes on a slow or
# busy machine. The measurements behind each choice are in benches/RESULTS.md.
_CPU_FAST = dict(steps=2000, max_seconds=75.0, batch_samples=None, batch_rays=1024,
                 downscale=8, eval_views=8, video_frames=24, log2_hashmap_size=17,
                 grid_resolution=64, decay=0.8, step_divisor=256, loss="l2",
                 grid_warmup_cells=None, clock_views=8, **radiance.COMMON_PRESET)
PRESETS = {
    "gpu": _GPU,
    "gpu-fast": _GPU | dict(max_seconds=60.0, eval_views=20, downscale=2, video_frames=60),
    "cpu": _CPU_FAST | dict(steps=10000, max_seconds=3600.0, downscale=4, eval_views=50,
                            video_frames=60),
    "cpu-fast": _CPU_FAST,
}

make_task = radiance.make_task
load_trained = radiance.load_trained
