"""Reference occupancy-grid lookup and dense ray marching, in PyTorch.

The same float32 operations, in the same order, as csrc/include/nerfx/raymarch.h, so that the
kernels' samples can be compared exactly. The dense march (constant steps) visits every lattice
candidate of every ray and keeps those whose midpoint lies in an occupied cell: it skips nothing,
and it is slow. With cone_angle > 0 the candidates depend on where the march has been, so
march_rays_cone follows the kernel's rule step by step, all rays at once.
"""

from __future__ import annotations

import torch

from nerfx.specs import GridGeometry, clip_to_box, locate, occupied


def march_rays_dense(rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor,
                     far: torch.Tensor, jitter: torch.Tensor, bitfield: torch.Tensor,
                     g: GridGeometry, step_size: float, max_samples: int,
                     chunk: int = 4096) -> tuple[torch.Tensor, ...]:
    """Constant-step dense march. -> (offsets [N+1], t_start, t_end, positions, resume [N])."""
    lo, hi = g.box(rays_o.device)
    step = torch.tensor(step_size, dtype=torch.float32, device=rays_o.device)
    t_enter, t_exit, hit = clip_to_box(rays_o, rays_d, lo, hi)
    hit = hit & (rays_d != 0).any(-1)
    t0 = torch.where(hit, torch.maximum(near, t_enter), torch.zeros_like(near))
    t_far = torch.where(hit, torch.minimum(far, t_exit), torch.zeros_like(far))
    alive = hit & (t0 < t_far)
    starts, ends, counts, resume = [], [], [], []
    for a in range(0, rays_o.shape[0], chunk):
        b = min(a + chunk, rays_o.shape[0])
        span = torch.where(alive[a:b], (t_far[a:b] - t0[a:b]) / step, torch.zeros_like(t0[a:b]))
        n_candidates = int(span.max().item()) + 2 if b > a else 0
        k = torch.arange(n_candidates, dtype=torch.float32, device=rays_o.device)
        t_start = (k[None, :] + jitter[a:b, None]) * step + t0[a:b, None]  # [n, K]
        t_end = t_start + step
        mid = 0.5 * step + t_start
        valid = alive[a:b, None] & (mid < t_far[a:b, None])
        points = mid[..., None] * rays_d[a:b, None, :] + rays_o[a:b, None, :]  # [n, K, 3]
        keep = valid & occupied(bitfield, locate(points.reshape(-1, 3), g)).view(valid.shape)
        rank = keep.long().cumsum(1)  # 1-based rank of each kept sample
        capped = keep & (rank <= max_samples)
        count = capped.sum(1)
        # After a cap, marching resumes at the candidate following the last kept sample.
        last = torch.where(capped, k[None, :], torch.full_like(t_start, -1.0)).amax(1)
        resumed = (last + 1 + jitter[a:b]) * step + t0[a:b]
        more = count == max_samples  # a capped ray may have more samples ahead
        resume.append(torch.where(more, resumed, torch.full_like(resumed, float("inf"))))
        starts.append(t_start[capped])
        ends.append(t_end[capped])
        counts.append(count)
    counts_all = (torch.cat(counts) if counts  # no rays: an empty count on their device
                  else torch.zeros(0, dtype=torch.long, device=rays_o.device))
    offsets = torch.zeros(rays_o.shape[0] + 1, dtype=torch.long, device=rays_o.device)
    offsets[1:] = counts_all.cumsum(0)
    t_start = torch.cat(starts) if starts else rays_o.new_zeros(0)
    t_end = torch.cat(ends) if ends else rays_o.new_zeros(0)
    rays = torch.repeat_interleave(torch.arange(rays_o.shape[0], device=rays_o.device),
                                   counts_all)
    mid = 0.5 * step + t_start  # the point whose cell was tested
    positions = mid[:, None] * rays_d[rays] + rays_o[rays]
    resume_all = torch.cat(resume) if resume else rays_o.new_zeros(0)
    return offsets, t_start, t_end, positions, resume_all


def cell_exit(points: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor,
              g: GridGeometry) -> torch.Tensor:
    """Where each ray leaves the cell holding its point (min over moving axes). [M, 3] -> [M]"""
    r = g.resolution
    index = locate(points, g)  # [M]
    cascade = index // r**3
    cell = torch.stack([(index // (r * r)) % r, (index // r) % r, index % r], -1)  # [M, 3]
    face = torch.where(rays_d > 0, cell + 1, cell).float()
    scale = (2 ** cascade).float()[:, None]  # [M, 1]
    u = (face / float(r) * 2.0 - 1.0) * scale
    center = torch.tensor(g.center, dtype=torch.float32, device=points.device)
    half = torch.tensor(g.half_size, dtype=torch.float32, device=points.device)
    moving = rays_d != 0
    inv_d = torch.where(moving, 1.0 / torch.where(moving, rays_d, torch.ones_like(rays_d)),
                        torch.zeros_like(rays_d))
    t = (u * half + center - rays_o) * inv_d
    return torch.where(moving, t, torch.full_like(t, float("inf"))).amin(-1)


def march_rays_cone(rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor,
                    far: torch.Tensor, jitter: torch.Tensor, bitfield: torch.Tensor,
                    g: GridGeometry, step_size: float, cone_angle: float,
                    max_samples: int) -> tuple[torch.Tensor, ...]:
    """Cone-step march: dt = clamp(t * cone_angle, step, cell); from an empty cell, on to the
    first candidate whose midpoint is past the cell. -> as march_rays_dense."""
    device = rays_o.device
    n = rays_o.shape[0]
    f32 = dict(dtype=torch.float32, device=device)
    step = torch.tensor(step_size, **f32)
    cone = torch.tensor(cone_angle, **f32)
    cell_size = torch.tensor(2.0 * g.half_size[0] * 2 ** (g.cascades - 1), **f32) / g.resolution
    dt_max = torch.maximum(cell_size, step)
    lo, hi = g.box(device)
    t_enter, t_exit, hit = clip_to_box(rays_o, rays_d, lo, hi)
    hit = hit & (rays_d != 0).any(-1)
    t0 = torch.where(hit, torch.maximum(near, t_enter), torch.zeros_like(near))
    t_far = torch.where(hit, torch.minimum(far, t_exit), torch.zeros_like(far))
    t = jitter * step + t0  # [n] start of each ray's next candidate
    count = torch.zeros(n, dtype=torch.long, device=device)
    live = torch.nonzero(hit & (t0 < t_far)).flatten()  # rays still marching
    rays, starts, ends, points = [], [], [], []
    while live.numel() and max_samples > 0:
        t_start = t[live]
        dt = torch.minimum(torch.maximum(t_start * cone, step), dt_max)
        t_end = t_start + dt
        mid = 0.5 * dt + t_start
        inside = mid < t_far[live]
        live, t_start, dt, t_end, mid = (v[inside] for v in (live, t_start, dt, t_end, mid))
        o, d = rays_o[live], rays_d[live]
        p = mid[:, None] * d + o  # [m, 3]
        keep = occupied(bitfield, locate(p, g))
        rays.append(live[keep])
        starts.append(t_start[keep])
        ends.append(t_end[keep])
        points.append(p[keep])
        exit_t = cell_exit(p, o, d, g)
        t[live] = torch.where(keep, t_end, torch.maximum(t_end, exit_t - 0.5 * dt))
        count[live] += keep.long()
        live = live[count[live] < max_samples]
    resume = torch.where(count == max_samples, t, torch.full_like(t, float("inf")))
    ray_of = torch.cat(rays) if rays else torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(ray_of, stable=True).indices  # ray-major, each ray's samples in order
    offsets = torch.zeros(n + 1, dtype=torch.long, device=device)
    offsets[1:] = count.cumsum(0)

    def packed(parts: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.cat(parts)[order] if parts else torch.zeros(shape, **f32)

    return (offsets, packed(starts, (0,)), packed(ends, (0,)), packed(points, (0, 3)), resume)
