"""Image utilities for every model (NeRF renders, VAE, diffusion, ViT): float to uint8, a grid
of images, PNG files and videos written atomically (a run killed mid-write leaves the old file or
the new one).

Images are float tensors [B, C, H, W] (C = 1 or 3) in a stated value range: [-1, 1] for the
diffusion models, [0, 1] for the VAE. Nothing here imports the NeRF code.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["make_grid", "save_grid", "to_uint8", "write_png", "write_video"]


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Maps value_range linearly onto 0..255, clamped and rounded; any shape, uint8 out."""
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = (images.detach().float() - lo) * (255.0 / (hi - lo))
    return x.clamp_(0, 255).round_().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2,
              pad_value: float = 1.0) -> torch.Tensor:
    """Tiles images [B, C, H, W] into one [C, rows*(H+p)+p, nrow*(W+p)+p] image, row by row.

    nrow (images per row) defaults to ceil(sqrt(B)); the gaps and unused cells are pad_value.
    """
    if images.dim() != 4:
        raise ValueError(f"make_grid expects [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("make_grid: no images")
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = images.new_full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding),
                           pad_value)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_png(path: str | os.PathLike, image: np.ndarray | torch.Tensor) -> Path:
    """Writes a uint8 image ([H, W], [H, W, C], or a [C, H, W] tensor) as PNG, atomically."""
    if isinstance(image, torch.Tensor):
        if image.dim() == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = image.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        image = image.detach().cpu().numpy()
    if image.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8 pixels, got {image.dtype} (see to_uint8)")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"write_png expects [H, W], [H, W, 3|4] or [C, H, W], got {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; readable as any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2,
              min_side: int = 48) -> Path:
    """Saves images [B, C, H, W] in value_range as one PNG grid (atomically); returns the path.
    Images smaller than min_side pixels are enlarged by a whole factor, each pixel a square
    block (16x16 samples show at 48x48), so small samples can be seen without a viewer's blur."""
    images = images.detach().float().cpu()
    scale = max(1, -(-min_side // max(images.shape[-2:])))  # ceil(min_side / side)
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=value_range[1])
    return write_png(path, to_uint8(grid, value_range))


def write_video(frames: list[np.ndarray] | list[torch.Tensor], stem: str | os.PathLike,
                fps: int = 30) -> Path:
    """uint8 frames [H, W, 3] -> stem.mp4 (imageio-ffmpeg) or stem.gif (Pillow), atomically.
    Returns the path written."""
    if not frames:
        raise ValueError("write_video: no frames")
    frames = [f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f for f in frames]
    stem = Path(stem)
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the mp4 writer imageio needs)
    except ImportError:
        path = stem.with_suffix(".gif")
        tmp = path.with_name(path.name + ".tmp")
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
    else:
        path = stem.with_suffix(".mp4")
        tmp = path.with_name(path.stem + ".tmp.mp4")
        # libx264 (yuv420p) needs even sizes: repeat the last row or column where one is odd.
        h, w = frames[0].shape[:2]
        even = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
        imageio.mimwrite(tmp, even, fps=fps, macro_block_size=1)
    tmp.replace(path)  # written whole or not at all
    return path


CHART_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def line_chart(curves: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               y_range: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] = (480, 300)
               ) -> np.ndarray:
    """A line chart as a uint8 RGB picture [H, W, 3]: one coloured line per named curve of
    (x, y) points, x from 0 to the largest x, y over y_range, grid lines at tenths of y_range,
    a legend of the names. For pictures a run writes (accuracy against time, ...)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    left, right, top, bottom = 48, 12, 12, 36         # margins, pixels
    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    x_max = max((x for points in curves.values() for x, _ in points), default=1.0) or 1.0
    y_low, y_high = y_range

    def at(x: float, y: float) -> tuple[float, float]:
        y = min(max(y, y_low), y_high)
        return (left + x / x_max * (width - left - right),
                height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom))

    for i in range(11):                                 # grid and y ticks
        y = y_low + i / 10 * (y_high - y_low)
        _, py = at(0.0, y)
        draw.line([(left, py), (width - right, py)], fill=(225, 225, 225))
        if i % 2 == 0:
            draw.text((4, py - 6), f"{y:g}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):                                  # x ticks
        x = i / 4 * x_max
        px, _ = at(x, y_low)
        draw.text((px - 8, height - bottom + 4), f"{x:.0f}", fill="black", font=font)
    draw.text((width // 2 - 3 * len(x_label), height - 16), x_label, fill="black", font=font)
    draw.text((left + 6, top + 4), y_label, fill="black", font=font)
    for k, (name, points) in enumerate(curves.items()):
        colour = CHART_COLOURS[k % len(CHART_COLOURS)]
        if len(points) > 1:
            draw.line([at(x, y) for x, y in points], fill=colour, width=2)
        for x, y in points:
            px, py = at(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        ly = height - bottom - 16 * (len(curves) - k)
        draw.line([(width - right - 120, ly + 6), (width - right - 100, ly + 6)], fill=colour,
                  width=2)
        draw.text((width - right - 94, ly), name, fill="black", font=font)
    return np.asarray(image)
