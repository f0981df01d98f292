"""nerfx's built-in "room" scene: like a phone capture, not like NeRF-synthetic.

The built-in lego's toy vehicle stands on the floor of a textured room (parquet floor, papered
walls with pictures, a ceiling), so there is background at every depth and nothing is
transparent. 50 cameras on an arc in front of the toy face it, as someone walking round it with a
phone would hold one. The folder is Instant-NGP's layout: one transforms.json with the shared
intrinsics, a mild lens distortion (k1, k2, p1, p2), `aabb_scale` 4 (three occupancy-grid
cascades: the room reaches past the unit cube) and Instant-NGP's default scale and offset; every
8th view is held out by load_scene. The images are rendered through the lens (each pixel's rays
are undistorted by nerfx.cameras, so a reader must undistort to get them back) and 2 x 2
supersampled, as a sensor averages over its pixel; each view has a depth map (distance along the
unit ray through the pixel's centre, lens included) so the geometry is known.

Generated at first use, deterministic, cached under the built-in lego's data root.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nerfx.cameras import camera_rays, focal_from_fov, look_at
from nerfx.data import lego

N_VIEWS = 50  # as Instant-NGP's fox capture (data/nerf/fox: 50 photos)
FULL_WIDTH = 960  # the capture's width in pixels at downscale 1; 4:3 landscape
FOV_X_DEG = 60.0  # horizontal field of view of the pinhole part (degrees)
# Mild barrel distortion with a little decentring, OpenCV's radial-tangential model on
# normalised coordinates (nerfx.cameras; a phone's main camera after its own correction).
LENS = {"k1": -0.06, "k2": 0.012, "p1": 0.0008, "p2": -0.0005}
PRINCIPAL = (0.505, 0.495)  # (cx / w, cy / h): slightly off centre, as calibrated cameras are
AABB_SCALE = 4  # Instant-NGP's scene extent: cascades over 4x the unit cube
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)  # Instant-NGP's defaults (nerf_loader.cu)
# The room in world units (the toy spans about [-0.9, 0.9]): after Instant-NGP's scale 0.33 and
# offset 0.5 it lies inside [-1.5, 2.5]^3, the aabb_scale 4 box.
ROOM_HALF, ROOM_TOP = 5.0, 3.5
ARC_DEG = (-110.0, 110.0)  # camera azimuths (degrees, 0 = in front of the toy's bonnet, -x)
RADIUS = (3.0, 3.8)  # camera distance from the toy (world units), varying along the arc
ELEVATION_DEG = (12.0, 35.0)  # camera elevation (degrees), varying along the arc
SUPERSAMPLE = 2  # rays per pixel per axis (stratified)
AMBIENT = 0.55  # the room's shading: ambient + (1 - ambient) * max(n . light, 0)


def floor_height(prims: lego.Primitives) -> float:
    """The lowest point of the toy (its wheels): the floor it stands on."""
    low = float(prims.box_lo[:, 2].min())
    along_z = prims.cyl_axis == 2
    cyl_low = torch.where(along_z, prims.cyl_center[:, 2] - prims.cyl_half,
                          prims.cyl_center[:, 2] - prims.cyl_radius)
    return min(low, float(cyl_low.min()))


def _wall_texture(a: torch.Tensor, b: torch.Tensor, wall: int) -> torch.Tensor:
    """Papered wall: a hue per wall, vertical stripes, a dado panel and two pictures.
    a: [m] horizontal, b: [m] height above the floor (world units). -> [m, 3]"""
    hues = torch.tensor([(0.78, 0.70, 0.55), (0.55, 0.68, 0.74), (0.74, 0.58, 0.60),
                         (0.62, 0.72, 0.56)])
    base = hues[wall].expand(len(a), 3)
    stripes = 0.82 + 0.18 * torch.sin(2 * math.pi * a / 0.45)[:, None]  # period 0.45
    color = base * stripes
    panel = (b < 0.7)[:, None]  # a darker dado panel with vertical boards
    boards = 0.5 + 0.08 * torch.sin(2 * math.pi * a / 0.3)[:, None]
    color = torch.where(panel, base * boards, color)
    for k, (ca, cb, ha, hb) in enumerate(((-1.8, 1.7, 0.8, 0.55), (1.6, 1.9, 0.6, 0.8))):
        inside = ((a - ca).abs() < ha) & ((b - cb).abs() < hb)
        u, v = (a - ca) / ha, (b - cb) / hb  # [-1, 1] in the picture
        picture = torch.stack([0.5 + 0.4 * torch.sin(3 * u + wall + k),
                               0.5 + 0.4 * torch.sin(4 * v - wall),
                               0.5 + 0.4 * torch.cos(2 * (u + v) + k)], -1)
        frame = inside & (((a - ca).abs() > ha - 0.06) | ((b - cb).abs() > hb - 0.06))
        color = torch.where(inside[:, None], picture, color)
        color = torch.where(frame[:, None], torch.full_like(color, 0.12), color)
    return color


def _floor_texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Parquet: 0.5-unit tiles in two woods, with grain along each tile. -> [m, 3]"""
    i, j = torch.floor(x / 0.5), torch.floor(y / 0.5)
    odd = ((i + j) % 2 == 1)[:, None]
    light, dark = torch.tensor([0.72, 0.54, 0.34]), torch.tensor([0.52, 0.36, 0.22])
    along = torch.where(odd[:, 0], x, y)  # grain runs across alternate tiles
    grain = 0.9 + 0.1 * torch.sin(2 * math.pi * (along / 0.12 + 0.3 * torch.sin(i * 1.7 + j)))
    return torch.where(odd, light, dark) * grain[:, None]


def cast_room(o: torch.Tensor, d: torch.Tensor, floor: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from inside the room to its walls, floor or ceiling.
    o, d: [R, 3] (d unit) -> (rgb [R, 3], distance along the ray [R])."""
    lo = torch.tensor([-ROOM_HALF, -ROOM_HALF, floor])
    hi = torch.tensor([ROOM_HALF, ROOM_HALF, ROOM_TOP])
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    exit_t = torch.where(safe > 0, (hi - o) / safe, (lo - o) / safe)  # [R, 3]
    t, axis = exit_t.min(-1)  # [R]
    p = o + t[:, None] * d  # [R, 3]
    positive = d.gather(1, axis[:, None])[:, 0] > 0
    color = torch.empty_like(o)
    normal = torch.zeros_like(o)
    normal.scatter_(1, axis[:, None], torch.where(positive, -1.0, 1.0)[:, None])  # inward
    floor_hit = (axis == 2) & ~positive
    ceiling_hit = (axis == 2) & positive
    color[floor_hit] = _floor_texture(p[floor_hit, 0], p[floor_hit, 1])
    color[ceiling_hit] = torch.tensor([0.88, 0.87, 0.84])
    for wall, (ax, pos) in enumerate(((0, False), (0, True), (1, False), (1, True))):
        on = (axis == ax) & (positive == pos)
        along = p[on, 1 - ax] * (1 if pos else -1)  # walls read left to right from inside
        color[on] = _wall_texture(along, p[on, 2] - floor, wall)
    light = torch.nn.functional.normalize(torch.tensor(lego.LIGHT), dim=0)
    shade = AMBIENT + (1 - AMBIENT) * (normal @ light).clamp(min=0)
    return color * shade[:, None], t


def camera_poses() -> list[np.ndarray]:
    """N_VIEWS cameras on an arc in front of the toy, rising and falling a little, each aimed
    at a point near the toy's centre (a hand-held capture does not aim exactly)."""
    rng = np.random.default_rng(7)
    poses = []
    for k, s in enumerate(np.linspace(0.0, 1.0, N_VIEWS)):
        azimuth = math.radians(180.0 + ARC_DEG[0] + s * (ARC_DEG[1] - ARC_DEG[0]))
        radius = RADIUS[0] + (RADIUS[1] - RADIUS[0]) * 0.5 * (1 + math.sin(5 * s + 1))
        elevation = math.radians(ELEVATION_DEG[0] + (ELEVATION_DEG[1] - ELEVATION_DEG[0])
                                 * 0.5 * (1 + math.sin(3 * s * math.pi + k % 3)))
        position = radius * np.array([math.cos(azimuth) * math.cos(elevation),
                                      math.sin(azimuth) * math.cos(elevation),
                                      math.sin(elevation)])
        poses.append(look_at(position, rng.normal(0.0, 0.05, 3)))
    return poses


def intrinsics(width: int) -> tuple[int, torch.Tensor]:
    """-> (height, [11] fx, fy, cx, cy, k1, k2, k3, k4, p1, p2, is_fisheye) at this width."""
    height = round(width * 3 / 4)
    focal = focal_from_fov(math.radians(FOV_X_DEG), width)
    return height, torch.tensor([focal, focal, PRINCIPAL[0] * width, PRINCIPAL[1] * height,
                                 LENS["k1"], LENS["k2"], 0.0, 0.0, LENS["p1"], LENS["p2"], 0.0])


def shade_rays(o: torch.Tensor, d: torch.Tensor, prims: lego.Primitives, floor: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy where a ray hits it first, the room elsewhere. -> (rgb [R, 3], t [R])"""
    rgb_toy, alpha, t_toy = lego.cast_rays(o, d, prims)
    rgb_room, t_room = cast_room(o, d, floor)
    toy = (alpha > 0) & (t_toy < t_room)
    return (torch.where(toy[:, None], rgb_toy, rgb_room),
            torch.where(toy, t_toy, t_room))


def render_view(pose: np.ndarray, width: int, prims: lego.Primitives, floor: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """-> (RGB uint8 [h, w, 3] through the lens, supersampled; depth float32 [h, w] along the
    unit ray through each pixel's centre)."""
    height, camera = intrinsics(width)
    n = width * height
    pixel = torch.arange(n)
    u, v = (pixel % width).float(), (pixel // width).float()  # [n]
    pose_t = torch.from_numpy(pose).float()
    offsets = (torch.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5  # centred strata
    du, dv = torch.meshgrid(offsets, offsets, indexing="xy")
    du, dv = du.flatten(), dv.flatten()  # [S * S]
    # All subsamples and the centre in one batch: [(S * S + 1) * n] rays.
    uu = torch.cat([(u[None] + du[:, None]).flatten(), u])
    vv = torch.cat([(v[None] + dv[:, None]).flatten(), v])
    m = uu.numel()
    o, d = camera_rays(pose_t.expand(m, 4, 4), camera.expand(m, -1), uu, vv)
    rgb, t = shade_rays(o, d, prims, floor)
    image = rgb[:-n].view(-1, n, 3).mean(0).clamp(0, 1)  # [n, 3]
    image = (image * 255 + 0.5).to(torch.uint8).view(height, width, 3).numpy()
    return image, t[-n:].view(height, width).numpy().astype(np.float32)


def generate(width: int = FULL_WIDTH, root: Path | None = None, progress: bool = True) -> Path:
    """Writes the scene at width x (3/4 width) once (atomically) and returns its folder."""
    height, camera = intrinsics(width)
    folder = Path(root or lego.default_root()) / f"room-{width}x{height}"
    if (folder / "transforms.json").is_file():
        return folder
    prims = lego.build_vehicle()
    floor = floor_height(prims)
    with lego.staged_folder(folder) as staging:
        (staging / "images").mkdir()
        (staging / "depth").mkdir()
        frames = []
        for i, pose in enumerate(tqdm(camera_poses(), desc=f"built-in room {width}x{height}",
                                      unit="view", disable=not progress)):
            image, depth = render_view(pose, width, prims, floor)
            Image.fromarray(image, "RGB").save(staging / "images" / f"frame_{i:03d}.png")
            np.save(staging / "depth" / f"frame_{i:03d}.npy", depth)
            frames.append({"file_path": f"images/frame_{i:03d}.png",
                           "depth_path": f"depth/frame_{i:03d}.npy",
                           "transform_matrix": pose.tolist()})
        fx, fy, cx, cy = camera[:4].tolist()
        meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": width, "h": height,
                **LENS, "aabb_scale": AABB_SCALE, "scale": NGP_SCALE,
                "offset": list(NGP_OFFSET), "frames": frames}
        (staging / "transforms.json").write_text(json.dumps(meta, indent=1))
    return folder
