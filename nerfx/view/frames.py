"""One frame of the viewer, rendered a chunk of rays at a time so that it can stop between chunks
(a camera move cancels it; a training step may come between two chunks), and its picture in
each display mode."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from nerfx.cameras import image_rays
from nerfx.specs import Composited
from nerfx.view.camera import ViewCamera

MODES = ("rgb", "depth", "opacity")
# A perceptual colour map (turbo-like stops) for depth: near is warm, far is cool.
_DEPTH_STOPS = np.array([[122, 4, 3], [249, 117, 29], [239, 225, 57], [100, 253, 106],
                         [30, 181, 232], [48, 18, 59]], dtype=np.float32)


class Renderable(Protocol):
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited: ...

    def parameters(self): ...


@dataclass(frozen=True)
class FrameRequest:
    """What to draw: a camera at a height in pixels, in a mode; `kind` is why (moving, refine,
    refresh), which decides the share of time it may take while training."""

    camera: ViewCamera
    height: int
    mode: str = "rgb"
    kind: str = "refine"

    @property
    def size(self) -> tuple[int, int]:
        return self.camera.size_at(self.height)

    @property
    def n_rays(self) -> int:
        width, height = self.size
        return width * height


class FrameJob:
    """Renders a FrameRequest chunk by chunk with a pipeline's render (the compacting renderer)."""

    def __init__(self, request: FrameRequest, model: Renderable):
        self.request, self.model = request, model
        self.device = next(model.parameters()).device
        width, height = request.size
        self.width, self.height = width, height
        self.pose = torch.as_tensor(request.camera.pose, dtype=torch.float32, device=self.device)
        self.intrinsics = request.camera.intrinsics(width, height).to(self.device)
        self.background = torch.ones(3, device=self.device)
        self.done_rays = 0
        self.seconds = 0.0
        self._rgb, self._depth, self._opacity = [], [], []

    @property
    def finished(self) -> bool:
        return self.done_rays >= self.width * self.height

    @torch.no_grad()
    def advance(self, n_rays: int) -> int:
        """Renders the next n_rays pixels (row-major); returns how many it rendered."""
        total = self.width * self.height
        stop = min(self.done_rays + max(n_rays, 1), total)
        tick = time.perf_counter()
        o, d = image_rays(self.pose, self.intrinsics, self.width, self.height, self.done_rays,
                          stop)
        out = self.model.render(o, d, self.background)
        self._rgb.append(out.color.float().clamp(0, 1).cpu())
        self._depth.append(out.depth.float().cpu())
        self._opacity.append(out.opacity.float().cpu())
        n = stop - self.done_rays
        self.done_rays = stop
        self.seconds += time.perf_counter() - tick
        return n

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rgb [H, W, 3], depth [H, W], opacity [H, W]) of a finished job."""
        h, w = self.height, self.width
        return (torch.cat(self._rgb).reshape(h, w, 3), torch.cat(self._depth).reshape(h, w),
                torch.cat(self._opacity).reshape(h, w))

    def picture(self) -> np.ndarray:
        """The finished frame in its mode, uint8 [H, W, 3]."""
        rgb, depth, opacity = self.outputs()
        return picture(self.request.mode, rgb, depth, opacity)


def picture(mode: str, rgb: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor
            ) -> np.ndarray:
    """rgb as it is; depth colour-mapped over the covered pixels (opacity > 0.5; empty pixels
    white); opacity as grey (opaque black on white, as the rgb's background). -> uint8 [H, W, 3]"""
    if mode == "rgb":
        return (rgb.numpy() * 255 + 0.5).astype(np.uint8)
    if mode == "opacity":
        grey = ((1 - opacity.clamp(0, 1)).numpy() * 255 + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode != "depth":
        raise ValueError(f"unknown mode {mode!r}; the viewer shows {', '.join(MODES)}")
    covered = (opacity > 0.5).numpy()
    surface = (depth / opacity.clamp(min=1e-6)).numpy()
    out = np.full((*depth.shape, 3), 255, dtype=np.uint8)
    if covered.any():
        lo, hi = surface[covered].min(), surface[covered].max()
        out[covered] = colour_map((surface[covered] - lo) / max(hi - lo, 1e-6))
    return out


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 [..., 3] along the depth colour map."""
    x = np.clip(values, 0, 1) * (len(_DEPTH_STOPS) - 1)
    i = np.minimum(np.floor(x).astype(np.int64), len(_DEPTH_STOPS) - 2)
    t = (x - i)[..., None]
    return ((1 - t) * _DEPTH_STOPS[i] + t * _DEPTH_STOPS[i + 1] + 0.5).astype(np.uint8)


def height_for(camera: ViewCamera, n_rays: float, floor: int, cap: int) -> int:
    """The frame height whose ray count is about n_rays at the camera's aspect ratio, at least
    `floor` (and at most the canvas, and `cap`)."""
    aspect = camera.width / camera.height
    height = int(math.sqrt(max(n_rays, 1) / aspect))
    return max(min(height, camera.height, cap), min(floor, camera.height))
