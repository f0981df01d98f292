"""The built-in `shapes` image set: no download. Coloured geometric shapes (circle, square,
triangle, star, cross, ring, half-disc, arrow) on textured backgrounds (gradients, stripes,
checks, waves), one label per image. Every image is drawn from a seed in resolution-independent
coordinates and rendered with anti-aliased edges from signed distances, so the same seed gives
the same picture at any size.

    images, labels = make_shapes(100, size=32, seed=0)    # uint8 [100, 3, 32, 32], int64 [100]
    train = load_shapes("train", size=16)                 # an ImageDataset of SHAPES_SIZES images
    more = make_shapes(64, 16, shapes_seed("train"), start=10000)   # the training stream goes on
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nerfx.data.image_datasets import ImageDataset, check_split

__all__ = ["SHAPES_SIZES", "SHAPE_CLASSES", "load_shapes", "make_shapes", "shapes_seed"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "half-disc", "arrow")
SHAPES_SIZES = {"train": 10000, "test": 2000}  # default number of `shapes` images per split


def _shape_polygons() -> dict[str, np.ndarray]:
    """Vertices [V, 2] of the polygonal classes in the unit disc, counter-clockwise."""

    def regular(k: int, r: float = 1.0, phase: float = math.pi / 2) -> np.ndarray:
        a = phase + 2 * math.pi * np.arange(k) / k
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)

    star = np.empty((10, 2))
    star[0::2], star[1::2] = regular(5, 1.0), regular(5, 0.42, math.pi / 2 + math.pi / 5)
    w = 0.33
    cross = np.array([(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
                      (-1, w), (-1, -w), (-w, -w), (-w, -1)], dtype=np.float64) * 0.9
    arrow = np.array([(-0.95, -0.28), (0.15, -0.28), (0.15, -0.7), (0.95, 0.0), (0.15, 0.7),
                      (0.15, 0.28), (-0.95, 0.28)])
    shapes = {"square": regular(4, 0.95, math.pi / 4), "triangle": regular(3, 1.0),
              "star": star, "cross": cross, "arrow": arrow}
    return {k: v.astype(np.float32) for k, v in shapes.items()}


def _polygon_sdf(p: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance from points p [..., 2] to a closed polygon [V, 2] (negative inside).

    Inigo Quilez's exact polygon distance: the nearest edge gives the distance, the crossing
    number of a ray along +x gives the sign.
    """
    px, py = p[..., 0], p[..., 1]
    d = (px - verts[0, 0]) ** 2 + (py - verts[0, 1]) ** 2
    s = np.ones(px.shape, dtype=p.dtype)
    for i in range(len(verts)):
        (xi, yi), (xj, yj) = verts[i], verts[i - 1]
        ex, ey, wx, wy = xj - xi, yj - yi, px - xi, py - yi
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * h) ** 2 + (wy - ey * h) ** 2)
        c1, c2, c3 = py >= yi, py < yj, ex * wy > ey * wx
        s = np.where((c1 & c2 & c3) | (~c1 & ~c2 & ~c3), -s, s)
    return s * np.sqrt(d)


def _shape_sdf(name: str, p: np.ndarray) -> np.ndarray:
    """Distance [..., ] from points p [..., 2] in the shape's unit frame (radius about 1)."""
    r = np.sqrt((p ** 2).sum(-1))
    if name == "circle":
        return r - 1.0
    if name == "ring":
        return np.abs(r - 0.72) - 0.28
    if name == "half-disc":  # the disc's upper half, moved down to centre it
        q = p + np.array([0.0, 0.42], dtype=p.dtype)
        return np.maximum(np.sqrt((q ** 2).sum(-1)) - 1.0, -q[..., 1])
    return _polygon_sdf(p, _SHAPE_POLYGONS[name])


_SHAPE_POLYGONS = _shape_polygons()


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[n] each in [0, 1] -> [n, 3]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


_DRAWS_PER_IMAGE = 24  # random numbers drawn per image (a few spare for later parameters)


def make_shapes(n: int, size: int = 32, seed: int = 0, start: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8 [n, 3, size, size]) and labels (int64 [n]) of the `shapes` set: images
    start, .., start + n - 1 of the endless sequence a seed gives.

    Image i depends only on (seed, i), not on n, start or size: a larger n extends the set,
    make_shapes(n, seed=s, start=k) is make_shapes(k + n, seed=s)[k:], and another size renders
    the same pictures at another resolution.
    """
    if n < 0 or start < 0 or size < 4:
        raise ValueError(f"make_shapes needs n >= 0, start >= 0 and size >= 4, got n={n}, "
                         f"start={start}, size={size}")
    bits = np.random.PCG64(np.random.SeedSequence([seed, 0x5BA9E5]))
    # A fixed-width block of random numbers per image, so image i is the same whatever n is;
    # each float64 takes one 64-bit draw, so skipping `start` images is advancing the generator.
    bits.advance(_DRAWS_PER_IMAGE * start)
    u = np.random.Generator(bits).random((n, _DRAWS_PER_IMAGE)).astype(np.float32)
    labels = (u[:, 0] * len(SHAPE_CLASSES)).astype(np.int64)
    # Background: a texture mixing two colours of similar hue, muted; the shape: a saturated
    # colour whose hue sits away from the background's and whose brightness differs.
    bg_h = u[:, 1]
    bg_s, bg_v = 0.15 + 0.35 * u[:, 2], 0.35 + 0.45 * u[:, 3]
    bg_a = _hsv_to_rgb(bg_h, bg_s, bg_v)
    # The texture's second colour: near the first (a texture, not a second object).
    bg_b = _hsv_to_rgb((bg_h + 0.08 * (u[:, 4] - 0.5)) % 1.0, bg_s * (0.5 + 0.5 * u[:, 5]),
                       np.clip(bg_v + 0.3 * (u[:, 6] - 0.5), 0.0, 1.0))
    fg_h = (bg_h + 0.25 + 0.5 * u[:, 7]) % 1.0
    fg_v = np.where(bg_v > 0.57, 0.15 + 0.25 * u[:, 8], 0.8 + 0.2 * u[:, 8])
    fg = _hsv_to_rgb(fg_h, 0.65 + 0.35 * u[:, 9], fg_v)
    texture = (u[:, 10] * 4).astype(np.int64)  # 0 gradient, 1 stripes, 2 checks, 3 waves
    angle_bg = u[:, 11] * 2 * math.pi
    freq = 1.5 + 3.0 * u[:, 12]  # periods across the image
    phase = u[:, 13] * 2 * math.pi
    radius = 0.42 + 0.33 * u[:, 14]  # in units of half the image side
    rot = u[:, 15] * 2 * math.pi
    cx = (1.0 - radius) * (2 * u[:, 16] - 1) * 0.9
    cy = (1.0 - radius) * (2 * u[:, 17] - 1) * 0.9
    aspect = 0.85 + 0.3 * u[:, 18]

    # Pixel centres in [-1, 1], y up.
    t = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    gx, gy = np.meshgrid(t, -t, indexing="xy")  # [size, size]
    pix = 2.0 / size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, min(256, 2 ** 20 // (size * size)))  # at most about 4 MB per float array
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        x, y = gx[None], gy[None]  # [1, H, W]
        # Background texture: a mix weight in [0, 1] per pixel, each image its own kind.
        ca = np.cos(angle_bg[sl]).astype(np.float32)[:, None, None]
        sa = np.sin(angle_bg[sl]).astype(np.float32)[:, None, None]
        f = (math.pi * freq[sl]).astype(np.float32)[:, None, None]
        ph = phase[sl].astype(np.float32)[:, None, None]
        mix = np.empty((m, size, size), dtype=np.float32)
        for kind in range(4):
            s = texture[sl] == kind
            if not s.any():
                continue
            along = ca[s] * x + sa[s] * y  # [m_s, H, W]
            across = -sa[s] * x + ca[s] * y
            if kind == 0:  # linear gradient
                mix[s] = 0.5 + 0.5 * along / math.sqrt(2)
            elif kind == 1:  # stripes
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + ph[s])
            elif kind == 2:  # checks
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + ph[s]) * np.sin(f[s] * across)
            else:  # waves
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + 1.5 * np.sin(math.pi * across) + ph[s])
        mix = mix[..., None]
        bg = bg_a[sl][:, None, None] * (1 - mix) + bg_b[sl][:, None, None] * mix  # [m, H, W, 3]
        # The shape, in its own frame: translate, rotate, scale (the distance scales back).
        px, py = x - cx[sl][:, None, None], y - cy[sl][:, None, None]
        cr, sr = np.cos(rot[sl])[:, None, None], np.sin(rot[sl])[:, None, None]
        r = radius[sl][:, None, None]
        a = aspect[sl][:, None, None]
        local = np.stack([(cr * px + sr * py) / (r * a), (-sr * px + cr * py) / r], -1)
        dist = np.empty((m, size, size), dtype=np.float32)
        for k, name in enumerate(SHAPE_CLASSES):
            sel = labels[sl] == k
            if sel.any():
                dist[sel] = _shape_sdf(name, local[sel])
        dist *= np.minimum(r, r * a)  # back to image units (conservative for stretched shapes)
        alpha = np.clip(0.5 - dist / pix, 0.0, 1.0)[..., None]  # pixel coverage
        rgb = bg * (1 - alpha) + fg[sl][:, None, None] * alpha
        images[sl] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels))


def shapes_seed(split: str, seed: int = 0) -> int:
    """The make_shapes seed of a split: train and test draw from different seeds, so an endless
    training stream (make_shapes(..., start=k)) never meets a test image."""
    check_split(split)
    return 2 * seed + (split == "test")


def load_shapes(split: str = "train", size: int = 32, n: int | None = None,
                seed: int = 0) -> ImageDataset:
    """The built-in `shapes` set: train and test draw from different seeds, never overlapping."""
    check_split(split)
    n = SHAPES_SIZES[split] if n is None else n
    images, labels = make_shapes(n, size, seed=shapes_seed(split, seed))
    return ImageDataset(images, labels, SHAPE_CLASSES, f"shapes/{split}")

