"""Instant-NGP trained as its code trains it (issue 16): jittered and compacted training rays,
cone stepping in large scenes, the Huber loss, an EMA of the weights, L2 on the MLP weights only,
and a grid that keeps the maximum of duplicate samples."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.models.ema import EMA
from nerfx.models.pipelines import InstantNGPPipeline, build_pipeline
from nerfx.ops.raymarch import march_rays
from nerfx.render import renderer
from nerfx.render.occupancy import OccupancyGrid
from nerfx.trainers.radiance import make_optimizer

AABB = [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]
SPEC = {"name": "ngp", "aabb": AABB, "cascades": 1, "log2_hashmap_size": 12,
        "grid_resolution": 16, "decay": 0.8, "step_divisor": 256, "loss": "huber"}


def rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from a sphere of radius 4 toward points near the centre. -> (o [n, 3], d [n, 3])"""
    gen = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * 4
    target = torch.rand(n, 3, generator=gen) - 0.5
    return o, torch.nn.functional.normalize(target - o, dim=-1)


def pipeline_with_recorded_samples(spec: dict = SPEC):
    """A pipeline whose field records the positions it is trained on (forward with gradients)."""
    torch.manual_seed(0)
    pipeline = build_pipeline(spec)
    seen: list[torch.Tensor] = []
    pipeline.field.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return pipeline, seen


def test_training_rays_start_at_a_random_fraction_of_a_step():
    pipeline, seen = pipeline_with_recorded_samples()
    o, d = rays(64)
    background, target = torch.ones(64, 3), torch.rand(64, 3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        pipeline.train_forward(o, d, background, target, step=1, generator=gen)
    first, second = seen
    # The same rays, marched twice: jittered lattices differ (not a shift of the same lattice).
    assert first.shape != second.shape or not torch.allclose(first, second)
    # Rendering (test time) is not jittered: the same rays give the same image.
    with torch.no_grad():
        a, b = pipeline.render(o, d), pipeline.render(o, d)
    assert torch.equal(a.color, b.color)


def test_the_cone_angle_follows_the_scene_and_reaches_the_march(monkeypatch):
    assert InstantNGPPipeline.scene_args(1) == {"cone_angle": 0.0}
    assert InstantNGPPipeline.scene_args(16) == {"cone_angle": 1 / 256}
    assert InstantNGPPipeline.scene_args(16, 1024) == {"cone_angle": 1 / 256}
    assert InstantNGPPipeline.scene_args(4, 256) == {"cone_angle": 1 / 64}  # the CPU's 4x step
    assert build_pipeline(SPEC).cone_angle == 0.0
    # aabb_scale 4, the paper's step (sqrt(3)/1024 of the unit box), cone angle from the scene
    big = build_pipeline(SPEC | {"cascades": 3, "step_divisor": 1024})
    assert big.cone_angle == 1 / 256
    cones = []

    def recording_march(*args, **kwargs):
        cones.append(kwargs["cone_angle"])
        return march_rays(*args, **kwargs)

    monkeypatch.setattr(renderer, "march_rays", recording_march)
    o, d = rays(16)
    big.train_forward(o, d, torch.ones(16, 3), torch.rand(16, 3), step=1)
    assert cones == [1 / 256]
    # With it, a ray across the outer box of a fresh (all occupied) grid reaches the far side
    # within the sample cap; constant steps stop at the cap, a third of the way across.
    o = torch.tensor([[-6.5, 0.1, 0.2]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    for cone, reaches in ((1 / 256, True), (0.0, False)):
        samples = march_rays(o, d, big.grid, step_size=big.step_size, cone_angle=cone,
                             max_samples=1024)
        assert (float(samples.t_end[-1]) > 11.5) == reaches, (cone, float(samples.t_end[-1]))


def test_run_configs_save_the_cone_angle(tmp_path, monkeypatch):
    from argparse import Namespace

    from nerfx.trainers import ngp
    from nerfx.trainers.radiance import pipeline_args

    scene = Namespace(aabb=AABB, aabb_scale=4)
    args = pipeline_args("ngp", ngp.PRESETS["cpu-fast"], scene)
    # The CPU's minimal step is 4x the paper's (step_divisor 256): its cone angle too.
    assert args["cone_angle"] == 1 / 64 and args["cascades"] == 3
    assert pipeline_args("ngp", ngp.PRESETS["gpu"], scene)["cone_angle"] == 1 / 256


def test_compaction_keeps_exactly_the_samples_compositing_weights():
    """terminate() keeps sample i iff its incoming transmittance is at least 1e-4, which is
    where the compositing op stops; checked per ray against a plain loop."""
    gen = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(AABB, resolution=16)
    o, d = rays(50)
    samples = march_rays(o, d, grid, step_size=0.02, perturb=True, generator=gen)
    sigmas = torch.rand(samples.t_start.shape[0], generator=gen) * 40  # opaque after a while
    kept = renderer.terminate(samples, sigmas, 1e-4)
    expected = []
    for r in range(50):
        lo, hi = int(samples.offsets[r]), int(samples.offsets[r + 1])
        optical_depth = 0.0
        for i in range(lo, hi):
            if math.exp(-optical_depth) >= 1e-4:
                expected.append(i)
            optical_depth += float(sigmas[i]) * float(samples.t_end[i] - samples.t_start[i])
    assert torch.equal(kept.t_start, samples.t_start[expected])
    assert torch.equal(kept.positions, samples.positions[expected])
    assert int(kept.offsets[-1]) == len(expected) < samples.t_start.shape[0]  # some dropped
    counts = kept.offsets.diff()
    assert torch.equal(kept.ray_indices, torch.repeat_interleave(torch.arange(50), counts))


def test_compacted_training_has_the_same_image_and_gradients_with_fewer_samples():
    """The dropped samples carry zero weight: the image and every parameter's gradient are those
    of training on all marched samples, from fewer field queries."""
    torch.manual_seed(0)
    pipeline = build_pipeline(SPEC)
    with torch.no_grad():  # an opaque ball in the middle of the box
        pipeline.field.density_mlp[-1].bias[0] = 3.0
    o, d = rays(64)
    grads, outs, counts = [], [], []
    for density_fn in (None, pipeline.field.density):
        pipeline.zero_grad()
        out, n_trained, n_marched = renderer.render_rays_counted(
            pipeline.field, pipeline.grid, o, d, step_size=pipeline.step_size,
            density_fn=density_fn)
        out.color.sum().backward()
        outs.append(out.color.detach())
        grads.append([p.grad.clone() for p in pipeline.parameters()])
        counts.append((n_trained, n_marched))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    (full, marched), (compacted, marched_again) = counts
    assert full == marched == marched_again and compacted < 0.5 * marched


def test_the_next_batch_is_sized_from_the_compacted_samples():
    torch.manual_seed(0)
    pipeline = build_pipeline(SPEC)
    with torch.no_grad():
        pipeline.field.density_mlp[-1].bias[0] = 3.0
    o, d = rays(256)
    out = pipeline.train_forward(o, d, torch.ones(256, 3), torch.rand(256, 3), step=1)
    assert out.n_samples < 0.5 * out.n_marched
    rays_next = pipeline.next_batch_rays(256, out.n_samples, batch_samples=256 * 64)
    assert rays_next == min(128 * round(256 * 256 * 64 / out.n_samples / 128), 256 * 64)


def test_the_huber_loss_is_instant_ngps():
    """huber(d, 0.1) / 5: d^2 below 0.1 (the L2 loss), (|d| - 0.05) / 5 above."""
    pipeline = build_pipeline(SPEC)
    torch.manual_seed(0)
    o, d = rays(8)
    target = torch.rand(8, 3)
    with torch.no_grad():
        out = pipeline.train_forward(o, d, torch.ones(8, 3), target, step=1)
        color = pipeline.render(o, d, torch.ones(3)).color  # no jitter: not the same samples
    residual = (color - target).abs()
    assert out.loss.shape == () and out.loss < out.mse  # residuals above 0.1 count linearly
    small, large = torch.tensor([0.05]), torch.tensor([0.5])
    huber = 2 * pipeline.huber_delta * torch.nn.functional.smooth_l1_loss(
        small, torch.zeros(1), beta=pipeline.huber_delta)
    assert float(huber) == pytest.approx(0.05**2)
    huber = 2 * pipeline.huber_delta * torch.nn.functional.smooth_l1_loss(
        large, torch.zeros(1), beta=pipeline.huber_delta)
    assert float(huber) == pytest.approx((0.5 - 0.05) / 5)
    assert residual.numel() == 24
    l2 = build_pipeline(SPEC | {"loss": "l2"})
    l2.load_state_dict(pipeline.state_dict())
    out = l2.train_forward(o, d, torch.ones(8, 3), target, step=1)
    assert float(out.loss.detach()) == float(out.mse)
    with pytest.raises(ValueError, match="unknown loss"):
        build_pipeline(SPEC | {"loss": "l1"})


def test_weight_decay_is_on_the_mlp_weights_only():
    pipeline = build_pipeline(SPEC)
    optimizer = make_optimizer(pipeline)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(decay) == len(list(pipeline.parameters()))
    for name, p in pipeline.named_parameters():
        expected = 1e-6 if name.endswith("weight") and "mlp" in name else 0.0
        assert decay[id(p)] == expected, name
    assert decay[id(pipeline.field.encoding.params)] == 0.0


def test_the_ema_is_debiased_as_tiny_cuda_nn_does():
    """ema_n = lerp(ema_{n-1}, w_n, (1 - d) / (1 - d^n)): the first average is the weights,
    the second (d w1 + w2) / (1 + d), never pulled toward the initial copy."""
    model = torch.nn.Linear(3, 1, bias=False)
    ema = EMA(model, 0.95, warmup=False, debias=True)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 3), 2.0))
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 3), (0.95 * 2 + 4) / 1.95))
    with pytest.raises(ValueError, match="warmup or debias"):
        EMA(model, 0.95, warmup=True, debias=True)


def test_duplicate_samples_of_a_cell_keep_their_maximum():
    """instant-ngp splats grid samples with an atomic max: when an update draws a cell twice,
    the larger thickness stays, whichever sample came last."""
    res = 4
    grid = OccupancyGrid(AABB, resolution=res)  # 64 cells: a partial update draws duplicates
    gen = torch.Generator().manual_seed(0)
    values: dict[int, list[float]] = {}

    def field(x: torch.Tensor) -> torch.Tensor:
        sigma = torch.rand(x.shape[0], generator=gen) * 10
        ijk = ((x - AABB[0]) / (3 / res)).floor().long().clamp(0, res - 1)
        cells = (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]
        for cell, s in zip(cells.tolist(), sigma.tolist(), strict=True):
            values.setdefault(cell, []).append(s)
        return sigma

    grid.update(0, field, step_size=0.01, generator=gen)  # every cell once
    before = grid.optical_thickness.clone()
    values.clear()
    grid.update(256, field, step_size=0.01, generator=gen)  # a quarter drawn twice over
    assert max(len(v) for v in values.values()) > 1  # some cell was drawn twice or more
    for cell, sampled in values.items():
        expected = max(grid.decay * float(before[cell]), max(sampled) * 0.01)
        assert float(grid.optical_thickness[cell]) == pytest.approx(expected, rel=1e-6)
