"""What the page renders: the crop box (only what lies inside an axis-aligned box of the run's
world) and, for frames that follow a moving camera, a coarser march.

An Instant-NGP pipeline is rendered by nerfx's compacting renderer with its field wrapped so that
the density is zero outside the box (the march and the grid are the pipeline's own, its step
times `step_scale`: a moving camera's frame marches twice the trained step, half the samples, for
a picture about 35 dB from the full one); a NeRF pipeline samples its rays only where they cross
the box (outside it, nothing is sampled, which is the same as zero density there) and keeps its
samples. Other models have no crop (`can_crop`) and render as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nerfx.models.nerf import NeRF
from nerfx.render.inference import render_rays_compacting
from nerfx.render.renderer import Field
from nerfx.specs import Composited, with_background

Box = tuple[float, float, float, float, float, float]   # x0, y0, z0, x1, y1, z1


def as_box(lo: Sequence[float], hi: Sequence[float]) -> Box:
    """(min corner [3], max corner [3]) -> the six numbers of a box."""
    values = tuple(float(v) for v in (*lo, *hi))
    if len(values) != 6:
        raise ValueError(f"a crop box has 3 + 3 coordinates, got {len(values)}")
    return values  # type: ignore[return-value]


def is_empty(box: Box) -> bool:
    """A box whose max is not above its min on some axis holds nothing."""
    return any(box[i + 3] <= box[i] for i in range(3))


def inside(positions: torch.Tensor, box: Box) -> torch.Tensor:
    """positions [n, 3] -> [n] bool, whether each lies in the box (its faces included)."""
    lo = positions.new_tensor(box[:3])
    hi = positions.new_tensor(box[3:])
    return ((positions >= lo) & (positions <= hi)).all(-1)


def crop_field(field: Field, box: Box) -> Field:
    """The field with zero density outside the box:
    (positions [n, 3], directions [n, 3]) -> (sigmas [n], rgbs [n, 3])."""
    def cropped(positions: torch.Tensor, directions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        sigmas, rgbs = field(positions, directions)
        return torch.where(inside(positions, box), sigmas, torch.zeros_like(sigmas)), rgbs
    return cropped


def can_crop(model: nn.Module) -> bool:
    """Whether the viewer can crop this model: an Instant-NGP pipeline (grid, field, step) or a
    NeRF pipeline."""
    return _is_ngp(model) or isinstance(getattr(model, "nerf", None), NeRF)


def _is_ngp(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("grid", "field", "step_size", "cone_angle"))


class CroppedRenderable(nn.Module):
    """A pipeline rendered inside a box (None: everywhere), an Instant-NGP pipeline's march at
    `step_scale` times its step; renders as the pipeline's `render` does (rays [n, 3] ->
    Composited) and has its parameters (the viewer finds the device there). The pipeline's
    weights and grid are read at each render, so it follows training."""

    def __init__(self, pipeline: nn.Module, box: Box | None, step_scale: float = 1.0):
        super().__init__()
        if not can_crop(pipeline):
            raise ValueError(f"the crop needs an Instant-NGP or NeRF pipeline, not "
                             f"{type(pipeline).__name__}")
        if not step_scale >= 1:
            raise ValueError(f"step_scale must be at least 1, got {step_scale}")
        self.pipeline, self.box, self.step_scale = pipeline, box, step_scale
        self._nerf: NeRF | None = None
        self.empty = box is not None and is_empty(box)
        if not _is_ngp(pipeline) and box is not None:
            own = pipeline.nerf.aabb.tolist()
            shared = as_box([max(a, b) for a, b in zip(own[:3], box[:3], strict=True)],
                            [min(a, b) for a, b in zip(own[3:], box[3:], strict=True)])
            self.empty = is_empty(shared)
            if not self.empty:
                self._nerf = _cropped_nerf(pipeline.nerf, shared)

    @torch.no_grad()
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited:
        if self.empty:
            n = rays_o.shape[0]
            empty = Composited(rays_o.new_zeros(n, 3), rays_o.new_zeros(n), rays_o.new_zeros(n),
                               rays_o.new_zeros(0))
            return with_background(empty, background)
        if self._nerf is not None:
            return self._nerf(rays_o, rays_d, background=background)[1]
        p = self.pipeline
        if not _is_ngp(p):
            return p.render(rays_o, rays_d, background)
        field = p.field if self.box is None else crop_field(p.field, self.box)
        step = None if p.step_size is None else p.step_size * self.step_scale
        # Every step scaled: the smallest, and the cone's that grows with distance.
        return render_rays_compacting(rays_o, rays_d, p.grid, field, step_size=step,
                                      cone_angle=p.cone_angle * self.step_scale,
                                      background=background)


def _cropped_nerf(nerf: NeRF, box: Box) -> NeRF:
    """A NeRF that shares the fields of `nerf` and samples only `box` (a part of its own)."""
    cropped = NeRF(list(box), nerf.config)
    cropped.coarse, cropped.fine = nerf.coarse, nerf.fine   # shared, not copied
    cropped.aabb = cropped.aabb.to(nerf.aabb.device)
    return cropped


def cropped(model: nn.Module, box: Box | None, step_scale: float = 1.0) -> nn.Module:
    """The model to render for a crop and a step scale: the model itself where neither changes
    anything (no box, and a full step or a model that is not Instant-NGP's)."""
    if box is None and (step_scale == 1 or not _is_ngp(model)):
        return model
    return CroppedRenderable(model, box, step_scale)
