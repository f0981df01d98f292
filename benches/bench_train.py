"""Instant-NGP training steps on the built-in lego, one backend per row: steps and samples per
second (the table's items are field samples).

The step is the trainer's own (nerfx.trainers.radiance.optimize_step on
nerfx.data.rays.TrainingRays, the preset's model): random
pixels on random backgrounds, occupancy-grid update, march, field, composite, Adam. The model is
fresh, so every grid cell is still occupied (the start of training, where steps are slowest; as
the grid prunes, samples per ray fall and steps speed up). CPU: the CPU recipe's 1024 rays;
GPU: as many rays as make 2^18 samples, as the paper's recipe does, in mixed precision. `triton`
runs the hash grid in Triton and the rest with `auto`.
"""

from __future__ import annotations

import pytest
import torch

from benches.helpers import devices, run_benchmark
from nerfx.data import lego
from nerfx.data.rays import TrainingRays
from nerfx.data.scenes import load_scene
from nerfx.models.pipelines import InstantNGPPipeline, build_pipeline
from nerfx.ops import BackendError, use_backend
from nerfx.ops.hashgrid import BACKENDS as HASH_BACKENDS
from nerfx.ops.raymarch import BACKENDS as MARCH_BACKENDS
from nerfx.trainers import ngp, preset_name
from nerfx.trainers.radiance import make_optimizer, optimize_step

IMAGE_SIZE = 32  # pixels of the built-in lego's views; the step's cost does not depend on it
CPU_RAYS = 1024
GPU_SAMPLES = 2**18


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = lego.generate(IMAGE_SIZE, root=tmp_path_factory.mktemp("lego"), progress=False)
    return load_scene(folder, "train")


def make_pipeline(impl: str, device: str):
    registry = HASH_BACKENDS if impl == "triton" else MARCH_BACKENDS
    try:
        registry.select(impl, torch.device(device), (torch.float32,))
    except BackendError as exc:
        pytest.skip(str(exc))
    preset = ngp.PRESETS[preset_name(device, fast=True)]
    args = {"name": "ngp", "aabb": [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], "cascades": 1}
    args |= {key: preset[key] for key in InstantNGPPipeline.BUILD_SETTINGS}
    return build_pipeline(args).to(device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["torch", "cpu", "cuda", "triton"])
def test_train_step(benchmark, scene, device, impl):
    pipeline = make_pipeline(impl, device)
    optimizer = make_optimizer(pipeline)
    gpu = device == "cuda"
    scaler = torch.amp.GradScaler(device, enabled=gpu)
    autocast = torch.float16 if gpu else None
    rays = TrainingRays(scene, torch.device(device))
    gen = torch.Generator(device).manual_seed(0)
    pipeline.prepare(scene.poses, scene.intrinsics, scene.width, scene.height)
    step = [0]

    def train_step():
        with use_backend(impl):  # triton: the ops without a triton backend choose themselves
            result = optimize_step(pipeline, optimizer, scaler, rays.sample(n_rays, gen), step[0],
                               gen, autocast)
        step[0] += 1
        return result

    n_rays = CPU_RAYS
    if gpu:  # as many rays as make 2^18 samples, measured on a first step
        first = train_step()
        n_rays = max(128, round(n_rays * GPU_SAMPLES / max(first.n_samples, 1) / 128) * 128)
    samples = train_step().n_samples
    run_benchmark(benchmark, train_step, device,
                  group=f"ngp train step {device} ({n_rays} rays, about {samples} samples)",
                  items=samples, unit="samples")
