"""Training the original NeRF (Mildenhall et al., 2020) on a scene: its presets; the task is
nerfx.trainers.radiance's, the pipeline nerfx.models.pipelines.NeRFPipeline."""

from __future__ import annotations

from nerfx.trainers import radiance

MODEL = "nerf"
DEFAULT_DATA = "lego"  # the NeRF-synthetic lego, or nerfx's built-in one
OPS: tuple[str, ...] = ("composite_rays",)

# The paper's: 4096 rays of 64 coarse + 128 fine samples (sec. 5.3), trained for days.
_GPU = dict(steps=300_000, max_seconds=48 * 3600.0, batch_samples=None, batch_rays=4096,
            downscale=1, eval_views=200, video_frames=120, n_coarse=64, n_fine=128,
            **radiance.COMMON_PRESET)
# 2 CPU cores: 256 rays of 32 + 64 samples on images at 1/16.
_CPU_FAST = dict(steps=1000, max_seconds=300.0, batch_samples=None, batch_rays=256,
                 downscale=16, eval_views=4, video_frames=12, n_coarse=32, n_fine=64,
                 **radiance.COMMON_PRESET)
PRESETS = {
    "gpu": _GPU,
    "gpu-fast": _GPU | dict(max_seconds=60.0, eval_views=20, downscale=2, video_frames=60),
    "cpu": _CPU_FAST | dict(steps=20000, max_seconds=3600.0, downscale=8, eval_views=20),
    "cpu-fast": _CPU_FAST,
}

make_task = radiance.make_task
load_trained = radiance.load_trained
