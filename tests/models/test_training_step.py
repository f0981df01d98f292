"""A few hundred steps of Instant-NGP on rays of the built-in toy: the photometric loss falls."""

from __future__ import annotations

import math

import numpy as np
import torch

from nerfx.data import lego
from nerfx.models.ngp import InstantNGP, NGPConfig
from nerfx.render import OccupancyGrid
from nerfx.render.renderer import camera_rays, render_rays


def test_loss_falls_and_the_field_finds_the_toy():
    torch.manual_seed(0)
    prims = lego.build_vehicle()
    poses = torch.tensor(np.stack(lego.camera_poses("train")[:20]), dtype=torch.float32)
    size = 24
    focal = 0.5 * size / math.tan(0.5 * lego.CAMERA_ANGLE_X)
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2]).expand(20, 4)
    gen = torch.Generator().manual_seed(0)
    model = InstantNGP([-1.5] * 3 + [1.5] * 3,
                       NGPConfig(n_levels=8, log2_hashmap_size=14, finest_resolution=256))
    grid = OccupancyGrid(model.aabb, resolution=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    losses = []
    step_size = math.sqrt(3) * 3 / 128  # world units: the march's step and the grid's dt
    for step in range(160):
        cam = torch.randint(0, 20, (512,), generator=gen)
        u = torch.randint(0, size, (512,), generator=gen).float()
        v = torch.randint(0, size, (512,), generator=gen).float()
        o, d = camera_rays(poses[cam], intrinsics[cam], u, v)
        rgb, alpha, _ = lego.cast_rays(o, d, prims)
        background = torch.rand(512, 3, generator=gen)
        target = rgb + (1 - alpha[:, None]) * background
        grid.update(step, model.density, step_size=step_size)
        out, _ = render_rays(model, grid, o, d, step_size=step_size, background=background)
        loss = torch.nn.functional.mse_loss(out.color, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.3 * first, (first, last)
    # The field learned where the toy is: denser on its surface than in the empty corners.
    o, d = camera_rays(poses[:1].expand(64, 4, 4), intrinsics[:1].expand(64, 4),
                       torch.full((64,), 12.0),
                       torch.arange(64.0) * size / 64)
    _, alpha, t = lego.cast_rays(o, d, prims)
    surface = (o + t[:, None] * d)[alpha > 0]
    corners = torch.rand(256, 3, generator=gen) * 0.4 + 1.05
    with torch.no_grad():
        assert model.density(surface).median() > 10 * model.density(corners).median()
