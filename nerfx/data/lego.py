"""nerfx's built-in "lego" scene: a small brick-built vehicle rendered by an exact ray caster
into the NeRF-synthetic layout (100 train, 100 val, 200 test views, camera_angle_x 0.6911,
RGBA PNGs with a transparent background, plus depth maps).

It is used when no real NeRF-synthetic lego is found. The model is made of axis-aligned boxes
(bricks, plates, a thin windscreen) and cylinders (studs, wheels, lamps), with small gaps between
bricks, in several colours, so the fine hash-grid levels matter. Rendering is analytic (ray-box
slabs, ray-cylinder quadratics with caps), shaded diffuse plus ambient. Deterministic.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nerfx.cameras import focal_from_fov, image_rays, look_at
from nerfx.runs import write_json

CAMERA_ANGLE_X = 0.6911112070083618
RADIUS = 4.031128857175551
SPLIT_SIZES = {"train": 100, "val": 100, "test": 200}
LIGHT = (0.4, -0.3, 0.87)  # direction towards the light, world z up
AMBIENT = 0.35

RED, YELLOW, BLACK = (0.78, 0.10, 0.08), (0.95, 0.77, 0.10), (0.08, 0.08, 0.09)
GREY, BLUE, GLASS = (0.62, 0.64, 0.66), (0.05, 0.33, 0.71), (0.55, 0.80, 0.90)
STUD_R, STUD_H, UNIT, PLATE, GAP = 0.06, 0.035, 0.16, 0.064, 0.006
FILL = 0.9  # half extent of the toy's longest side, in scene units


@dataclass
class Primitives:
    box_lo: torch.Tensor  # [B, 3]
    box_hi: torch.Tensor  # [B, 3]
    box_color: torch.Tensor  # [B, 3]
    cyl_center: torch.Tensor  # [C, 3] centre of the axis segment
    cyl_axis: torch.Tensor  # [C] int: 0, 1 or 2
    cyl_half: torch.Tensor  # [C] half length along the axis
    cyl_radius: torch.Tensor  # [C]
    cyl_color: torch.Tensor  # [C, 3]


def build_vehicle() -> Primitives:
    """The toy: a chassis plate, a bonnet, a cab with a windscreen, a tipper bed, four wheels."""
    boxes, cyls = [], []

    def brick(x0, y0, nx, ny, z0, height, color, studs=True):
        """A brick of nx x ny studs with its lower corner at grid cell (x0, y0)."""
        lo = (x0 * UNIT + GAP, y0 * UNIT + GAP, z0)
        hi = ((x0 + nx) * UNIT - GAP, (y0 + ny) * UNIT - GAP, z0 + height)
        boxes.append((lo, hi, color))
        if studs:
            for i in range(nx):
                for j in range(ny):
                    center = ((x0 + i + 0.5) * UNIT, (y0 + j + 0.5) * UNIT,
                              z0 + height + STUD_H / 2)
                    cyls.append((center, 2, STUD_H / 2, STUD_R, color))

    base = -0.35
    brick(-4, -2, 8, 4, base, PLATE, GREY)  # chassis plate
    brick(-4, -2, 3, 4, base + PLATE, 3 * PLATE, RED)  # bonnet
    brick(-4, -2, 1, 1, base + 4 * PLATE, PLATE, YELLOW, studs=False)  # headlamp blocks
    brick(-4, 1, 1, 1, base + 4 * PLATE, PLATE, YELLOW, studs=False)
    brick(-1, -2, 2, 4, base + PLATE, 6 * PLATE, RED)  # cab
    brick(-1, -2, 2, 4, base + 7 * PLATE, PLATE, BLACK)  # roof
    # Windscreen: a thin pane in front of the cab, set off by a gap.
    boxes.append(((-1 * UNIT - 0.02, -2 * UNIT + 0.03, base + 4 * PLATE),
                  (-1 * UNIT - 0.008, 2 * UNIT - 0.03, base + 7 * PLATE), GLASS))
    brick(1, -2, 3, 4, base + PLATE, PLATE, BLUE, studs=False)  # tipper bed floor
    brick(1, -2, 3, 1, base + 2 * PLATE, 2 * PLATE, BLUE)  # bed sides, a gap in the middle
    brick(1, 1, 3, 1, base + 2 * PLATE, 2 * PLATE, BLUE)
    brick(3, -1, 1, 2, base + 2 * PLATE, 2 * PLATE, YELLOW)  # tailgate
    for x in (-2.5 * UNIT, 2.5 * UNIT):  # wheels with hubs, axes along y
        for side in (-1, 1):
            y = side * (2 * UNIT + 0.045)
            cyls.append(((x, y, base), 1, 0.04, 0.13, BLACK))
            cyls.append(((x, y + side * 0.04, base), 1, 0.012, 0.06, GREY))
    cyls.append(((-4 * UNIT - 0.01, 0.0, base + 2 * PLATE), 0, 0.01, 0.05, YELLOW))  # grille lamp

    def tensor(rows):
        return torch.tensor(rows, dtype=torch.float32)

    # Centre the toy on the origin and scale it to fill most of [-1, 1]^3.
    lo, hi = tensor([b[0] for b in boxes]), tensor([b[1] for b in boxes])
    center = (lo.amin(0) + hi.amax(0)) / 2
    scale = FILL / float((hi.amax(0) - lo.amin(0)).max() / 2)
    return Primitives(
        (lo - center) * scale, (hi - center) * scale, tensor([b[2] for b in boxes]),
        (tensor([c[0] for c in cyls]) - center) * scale, torch.tensor([c[1] for c in cyls]),
        tensor([c[2] for c in cyls]) * scale, tensor([c[3] for c in cyls]) * scale,
        tensor([c[4] for c in cyls]))


def _hit_boxes(o, d, prims):
    """Nearest box hit per ray: t [R], normal [R, 3], colour [R, 3] (t = inf where none)."""
    inv = 1.0 / torch.where(d == 0, torch.full_like(d, 1e-30), d)  # [R, 3]
    t1 = (prims.box_lo[None] - o[:, None]) * inv[:, None]  # [R, B, 3]
    t2 = (prims.box_hi[None] - o[:, None]) * inv[:, None]
    near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_enter, axis = near.max(-1)  # [R, B]
    t_exit = far.min(-1).values
    valid = (t_enter <= t_exit) & (t_enter > 1e-6)
    t_enter = torch.where(valid, t_enter, torch.full_like(t_enter, math.inf))
    t, which = t_enter.min(-1)  # [R]
    hit_axis = axis.gather(1, which[:, None])[:, 0]
    normal = torch.zeros_like(o)
    normal.scatter_(1, hit_axis[:, None], -torch.sign(d.gather(1, hit_axis[:, None])))
    return t, normal, prims.box_color[which]


def _hit_cylinders(o, d, prims):
    """Nearest capped-cylinder hit per ray: t [R], normal [R, 3], colour [R, 3]."""
    axis = torch.nn.functional.one_hot(prims.cyl_axis, 3).to(o)  # [C, 3]
    rel = o[:, None] - prims.cyl_center[None]  # [R, C, 3]
    d_par = (d[:, None] * axis).sum(-1)  # [R, C]
    r_par = (rel * axis).sum(-1)
    d_perp = d[:, None] - d_par[..., None] * axis
    r_perp = rel - r_par[..., None] * axis
    a = (d_perp * d_perp).sum(-1)
    b = 2 * (d_perp * r_perp).sum(-1)
    c = (r_perp * r_perp).sum(-1) - prims.cyl_radius**2
    disc = b * b - 4 * a * c
    root = torch.sqrt(disc.clamp(min=0))
    t_side = (-b - root) / (2 * a.clamp(min=1e-30))
    along = r_par + t_side * d_par
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > 1e-6) & (along.abs() <= prims.cyl_half)
    t_side = torch.where(side_ok, t_side, torch.full_like(t_side, math.inf))
    # Caps: planes at +- half along the axis, within the radius.
    inf = torch.full_like(t_side, math.inf)
    t_cap = inf
    cap_sign = torch.zeros_like(t_side)
    for sign in (-1.0, 1.0):
        safe = torch.where(d_par.abs() < 1e-12, torch.full_like(d_par, 1e-12), d_par)
        t_plane = (sign * prims.cyl_half - r_par) / safe
        at = r_perp + t_plane[..., None] * d_perp
        ok = (t_plane > 1e-6) & ((at * at).sum(-1) <= prims.cyl_radius**2) & (d_par.abs() > 1e-12)
        better = ok & (t_plane < t_cap)
        t_cap = torch.where(better, t_plane, t_cap)
        cap_sign = torch.where(better, torch.full_like(cap_sign, sign), cap_sign)
    use_cap = t_cap < t_side
    t_all = torch.minimum(t_side, t_cap)  # [R, C]
    t, which = t_all.min(-1)
    pick = which[:, None]
    cap = use_cap.gather(1, pick)[:, 0]
    radial = (r_perp + t_side[..., None] * d_perp)  # [R, C, 3]
    radial = radial.gather(1, pick[..., None].expand(-1, 1, 3))[:, 0]
    cap_normal = axis[which] * cap_sign.gather(1, pick)
    normal = torch.where(cap[:, None], cap_normal, torch.nn.functional.normalize(radial, dim=-1))
    return t, normal, prims.cyl_color[which]


def cast_rays(o: torch.Tensor, d: torch.Tensor, prims: Primitives,
              chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ray casting. o, d: [R, 3] float32 (d normalised) -> (rgb [R, 3], alpha [R], t [R]).

    t is the distance to the first hit along the normalised ray (inf where the ray misses).
    """
    light = torch.nn.functional.normalize(torch.tensor(LIGHT, dtype=o.dtype, device=o.device),
                                          dim=0)
    # Only rays that hit the toy's bounding box (padded for studs and wheels) can hit a part.
    pad = 0.25
    bound = Primitives(prims.box_lo.amin(0, keepdim=True) - pad,
                       prims.box_hi.amax(0, keepdim=True) + pad, prims.box_color[:1],
                       *[t[:0] for t in (prims.cyl_center, prims.cyl_axis, prims.cyl_half,
                                         prims.cyl_radius, prims.cyl_color)])
    inside = (o - (bound.box_lo + bound.box_hi) / 2).abs().le(pad + 1.0).all(-1)
    candidates = torch.nonzero(torch.isfinite(_hit_boxes(o, d, bound)[0]) | inside).flatten()
    rgb = torch.zeros_like(o)
    alpha = torch.zeros_like(o[:, 0])
    depth = torch.full_like(o[:, 0], math.inf)
    rgbs, alphas, ts = [], [], []
    for i in range(0, candidates.numel(), chunk):
        oc, dc = o[candidates[i:i + chunk]], d[candidates[i:i + chunk]]
        tb, nb, cb = _hit_boxes(oc, dc, prims)
        tc, nc, cc = _hit_cylinders(oc, dc, prims)
        box_first = (tb <= tc)[:, None]
        t = torch.minimum(tb, tc)
        normal = torch.where(box_first, nb, nc)
        color = torch.where(box_first, cb, cc)
        shade = AMBIENT + (1 - AMBIENT) * (normal @ light).clamp(min=0)
        hit = torch.isfinite(t)
        rgbs.append(torch.where(hit[:, None], color * shade[:, None], torch.zeros_like(color)))
        alphas.append(hit.to(o.dtype))
        ts.append(t)
    if rgbs:
        rgb[candidates], alpha[candidates], depth[candidates] = (
            torch.cat(rgbs), torch.cat(alphas), torch.cat(ts))
    return rgb, alpha, depth


def camera_poses(split: str) -> list[np.ndarray]:
    """Upper-hemisphere views at radius ~4.03: random for train/val, a circle for test."""
    n = SPLIT_SIZES[split]
    if split == "test":
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        elevation = np.radians(30.0)
        return [look_at(RADIUS * np.array([np.cos(a) * np.cos(elevation),
                                           np.sin(a) * np.cos(elevation), np.sin(elevation)]))
                for a in angles]
    rng = np.random.default_rng({"train": 0, "val": 1}[split])
    poses = []
    for _ in range(n):
        azimuth = rng.uniform(0, 2 * np.pi)
        elevation = np.arcsin(rng.uniform(0.05, 0.95))  # uniform on the upper hemisphere
        poses.append(look_at(RADIUS * np.array([np.cos(azimuth) * np.cos(elevation),
                                                np.sin(azimuth) * np.cos(elevation),
                                                np.sin(elevation)])))
    return poses


def render_view(pose: np.ndarray, size: int, prims: Primitives):
    """-> (RGBA uint8 [size, size, 4], depth float32 [size, size], 0 where nothing is hit).
    The rays are cast on prims' device (a GPU's when generate chose one)."""
    focal = focal_from_fov(CAMERA_ANGLE_X, size)
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2])
    origins, dirs = image_rays(torch.from_numpy(pose).float(), intrinsics, size, size)
    device = prims.box_lo.device
    rgb, alpha, t = cast_rays(origins.to(device), dirs.to(device), prims)
    rgba = torch.cat([rgb, alpha[:, None]], -1).clamp(0, 1)
    image = (rgba * 255 + 0.5).to(torch.uint8).reshape(size, size, 4).cpu().numpy()
    depth = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).float()
    return image, depth.reshape(size, size).cpu().numpy()


def default_root() -> Path:
    base = os.environ.get("NERFX_DATA") or Path.home() / ".cache" / "nerfx"
    return Path(base) / "builtin"


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A new folder beside `folder` to write into, renamed to `folder` when the block ends
    without error (dropped if another process published `folder` first, or on an error): a
    generated scene appears whole or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(folder)


def generate(size: int = 800, root: Path | None = None, progress: bool = True,
             device: str | torch.device | None = None) -> Path:
    """Writes the scene at size x size once (atomically) and returns its folder.

    device: where the rays are cast; None: a GPU when torch sees one (the GPU preset's 400 x 400
    scene is 64M rays, minutes on a CPU and about a second on a GPU), else the CPU. The images
    agree to the last bit or so between devices (float rounding at the silhouettes)."""
    folder = (root or default_root()) / f"lego-{size}"
    if (folder / "transforms_test.json").is_file():
        _declare_point_sampled(folder)
        return folder
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    prims = build_vehicle()
    prims = Primitives(*[getattr(prims, f.name).to(device) for f in fields(Primitives)])
    views = [(split, i, pose) for split in SPLIT_SIZES for i, pose in
             enumerate(camera_poses(split))]
    with staged_folder(folder) as staging:
        frames = {split: [] for split in SPLIT_SIZES}
        for split, i, pose in tqdm(views, desc=f"built-in lego {size}px", unit="view",
                                   disable=not progress):
            image, depth = render_view(pose, size, prims)
            (staging / split).mkdir(exist_ok=True)
            Image.fromarray(image, "RGBA").save(staging / split / f"r_{i}.png")
            np.save(staging / split / f"r_{i}_depth.npy", depth)
            frames[split].append({"file_path": f"./{split}/r_{i}",
                                  "depth_path": f"./{split}/r_{i}_depth.npy",
                                  "transform_matrix": pose.tolist()})
        for split, items in frames.items():
            # One ray through each pixel's centre: the pixels are point samples (nerfx.data.scenes).
            (staging / f"transforms_{split}.json").write_text(json.dumps(
                {"camera_angle_x": CAMERA_ANGLE_X, "pixel_sampling": "point", "frames": items},
                indent=1))
    return folder


def _declare_point_sampled(folder: Path) -> None:
    """A folder generated before the transforms said how its pixels were sampled: say it now
    (each file rewritten atomically), so that training keeps to the pixel centres."""
    for split in SPLIT_SIZES:
        path = folder / f"transforms_{split}.json"
        meta = json.loads(path.read_text())
        if "pixel_sampling" not in meta:
            write_json(path, {**meta, "pixel_sampling": "point"})
