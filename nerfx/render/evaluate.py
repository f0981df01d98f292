"""Test views of a trained pipeline: rendered on white, scored against the truth, and pictured.

The one evaluation of a radiance field: the trainer's test PSNR (and its PSNR at the paper's
clock marks) and the test views of `python -m nerfx.render` both come from `evaluate_views`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from nerfx.data.scenes import Scene, composite_on
from nerfx.images import to_uint8, write_png
from nerfx.metrics import psnr, ssim
from nerfx.render.views import Renderable, depth_picture, render_view

# What a picture file may show: the prediction, the prediction beside the truth, the depth.
PICTURES = ("rgb", "vs_gt", "depth")


class ViewScore(NamedTuple):
    view: int  # index in the scene
    psnr: float  # dB, on white
    ssim: float


@torch.no_grad()
def evaluate_views(pipeline: Renderable, scene: Scene, views: Iterable[int],
                   out_dir: Path | None = None, files: Mapping[str, str] | None = None,
                   on_view: Callable[[ViewScore], None] | None = None,
                   with_ssim: bool = True) -> list[ViewScore]:
    """Renders each test view on white and scores it against the truth composited on white.

    out_dir and files: writes `<prefix>_<view:03d>.png` for each prefix -> picture in files
    (picture: "rgb", "vs_gt" or "depth"; PNGs written atomically). on_view: called with each
    view's score as it is done (progress output). with_ssim=False skips SSIM (reported as nan).
    """
    files = dict(files or {})
    bad = sorted(set(files.values()) - set(PICTURES))
    if bad:
        raise ValueError(f"evaluate_views: unknown pictures {bad}; choose from {PICTURES}")
    params = getattr(pipeline, "parameters", None)
    device = next(iter(params()), torch.empty(0)).device if params else torch.device("cpu")
    white = torch.ones(3, device=device)
    scores = []
    for view in views:
        rgb, depth, opacity = render_view(pipeline, scene.poses[view].to(device),
                                          scene.intrinsics[view].to(device), scene.width,
                                          scene.height, white)  # [H, W, 3], [H, W], [H, W]
        truth = composite_on(scene.images[view], torch.ones(3))  # [H, W, 3]
        score = ViewScore(view, psnr(rgb, truth), ssim(rgb, truth) if with_ssim else float("nan"))
        for prefix, kind in files.items() if out_dir is not None else ():
            write_png(out_dir / f"{prefix}_{view:03d}.png",
                      _picture(kind, rgb, truth, depth, opacity))
        scores.append(score)
        if on_view is not None:
            on_view(score)
    return scores


def _picture(kind: str, rgb: torch.Tensor, truth: torch.Tensor, depth: torch.Tensor,
             opacity: torch.Tensor) -> torch.Tensor | np.ndarray:
    """uint8 [H, W(, 3)]; rgb, truth: [H, W, 3] in [0, 1]; depth, opacity: [H, W]."""
    if kind == "rgb":
        return to_uint8(rgb, (0.0, 1.0))
    if kind == "vs_gt":
        return to_uint8(torch.cat([rgb, truth], 1), (0.0, 1.0))  # [H, 2W, 3]
    return depth_picture(depth, opacity)


def mean_scores(scores: list[ViewScore]) -> tuple[float, float]:
    """-> (mean PSNR, mean SSIM) over views."""
    if not scores:
        raise ValueError("mean_scores: no views")
    n = len(scores)
    return sum(s.psnr for s in scores) / n, sum(s.ssim for s in scores) / n
