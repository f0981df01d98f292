"""How accurate an exported mesh is, against a scene whose views carry exact depth maps (the
built-in lego writes one per view).

The truth a radiance field can reconstruct is the surface some camera sees, so the truth points
are the depth maps of every view (train, val, test) back-projected. The measure is Tanks and
Temples' (Knapitsch et al. 2017, sec. 4): at a distance tau,
  recall    = the fraction of truth points within tau of the mesh,
  precision = the fraction of mesh surface samples within tau of the truth, counted only over
              samples some camera could observe: inside its image and not behind the surface it
              sees there by more than tau (DTU's observation masks, Aanaes et al. 2016), so a
              floater in empty space counts and the underside no camera looks at does not,
  F-score   = 2 P R / (P + R),
with tau 1 % and 2 % of the truth's bounding-box diagonal. Distances are point to point, between
the truth points and dense area-uniform samples of the mesh. The Chamfer distance is DTU's
"overall": the mean of the mean distance mesh -> truth (observable samples) and truth -> mesh.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from nerfx.cameras import focal_from_fov, image_rays, project
from nerfx.data.lego import Primitives
from nerfx.data.scenes import frame_intrinsics
from nerfx.export.density import ExportError

SPLITS = ("train", "val", "test")
TAUS = (0.01, 0.02)  # fractions of the truth's bounding-box diagonal
MESH_SAMPLES = 1_000_000


@dataclass
class Truth:
    points: np.ndarray  # [N, 3] float64, back-projected depth of every view
    poses: torch.Tensor  # [V, 4, 4] camera-to-world
    intrinsics: torch.Tensor  # [V, 4] (fx, fy, cx, cy), or [V, 11] with the lens (nerfx.cameras)
    depths: torch.Tensor  # [V, H, W] distance along each unit ray, 0 where nothing is hit

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.points.max(0) - self.points.min(0)))


def _frames(scene: Path) -> list[tuple[Path, dict, list[dict]]]:
    """(file, shared keys, frames) of a NeRF-synthetic folder's splits or an Instant-NGP
    transforms.json."""
    files = [scene / f"transforms_{split}.json" for split in SPLITS]
    files = [path for path in files if path.is_file()] or \
        [path for path in (scene / "transforms.json",) if path.is_file()]
    found = []
    for path in files:
        meta = json.loads(path.read_text())
        found.append((path, meta, meta["frames"]))
    return found


def load_truth(scene: str | Path) -> Truth:
    """The depth maps of a NeRF-synthetic folder or an Instant-NGP transforms.json (the built-in
    lego and room) whose frames name a `depth_path` (.npy, distance along the unit ray through
    each pixel's centre, lens included, 0 for background), back-projected into the folder's own
    world (transform_matrix as written: an Instant-NGP scale and offset not applied)."""
    scene = Path(scene)
    points, poses, intrinsics, depths = [], [], [], []
    for path, meta, frames in _frames(scene):
        for index, frame in enumerate(frames):
            if "depth_path" not in frame:
                raise ExportError(f"{path}: frame {frame.get('file_path')} has no depth_path; "
                                  "--compare needs a scene with depth maps (the built-in lego "
                                  "or room)")
            depth = torch.from_numpy(np.load(scene / frame["depth_path"])).float()  # [H, W]
            h, w = depth.shape
            if "camera_angle_x" in meta:  # NeRF-synthetic
                focal = focal_from_fov(meta["camera_angle_x"], w)
                camera = torch.tensor([focal, focal, w / 2, h / 2])
            else:  # Instant-NGP: fl_x ... and the lens, at the depth map's resolution
                camera = torch.tensor(frame_intrinsics(meta, frame, w, h, path, index))
            pose = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            o, d = image_rays(pose, camera, w, h)  # [H * W, 3] each
            t = depth.flatten()
            hit = t > 0
            points.append((o[hit].double() + d[hit].double() * t[hit, None].double()).numpy())
            poses.append(pose)
            intrinsics.append(camera)
            depths.append(depth)
    if not points:
        raise ExportError(f"{scene}: no transforms_{{train,val,test}}.json or transforms.json "
                          "with depth maps")
    width = max(c.numel() for c in intrinsics)  # one layout: pinholes get a zero lens
    intrinsics = [torch.cat([c, torch.zeros(width - c.numel())]) for c in intrinsics]
    return Truth(np.concatenate(points), torch.stack(poses), torch.stack(intrinsics),
                 torch.stack(depths))


def hidden_depth(samples: np.ndarray, truth: Truth, stop: float = 0.0) -> np.ndarray:
    """How far each point [M, 3] lies behind the surface the views see, at best: the minimum
    over the views whose image holds it of (its distance from the camera - the depth at its
    pixel), -inf where a view's pixel sees nothing, +inf where no view's image holds it. A point
    is observable at margin tau when this is <= tau. Points are dropped from the search once
    they reach `stop`. -> [M] float64"""
    x = torch.from_numpy(samples).float()
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    todo = torch.arange(len(x))
    _, h, w = truth.depths.shape
    for pose, camera, depth in zip(truth.poses, truth.intrinsics, truth.depths, strict=True):
        if todo.numel() == 0:
            break
        rel = x[todo] - pose[:3, 3]  # [m, 3]
        uv, ahead = project(x[todo], torch.linalg.inv(pose), camera)  # through the lens, if any
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (ahead > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = depth[v.clamp(0, h - 1), u.clamp(0, w - 1)]  # [m]
        behind = torch.where(d > 0, rel.norm(dim=-1) - d, torch.full_like(d, -math.inf))
        behind = torch.where(inside, behind, torch.full_like(d, math.inf)).double()
        best[todo] = torch.minimum(best[todo], behind)
        todo = todo[best[todo] > stop]
    return best.numpy()


def compare(surface: trimesh.Trimesh, truth: Truth, taus: tuple[float, ...] = TAUS,
            n_samples: int = MESH_SAMPLES, seed: int = 0) -> dict:
    """F-score, precision and recall at each tau (fraction of the diagonal) and the Chamfer
    distance, of a mesh in the truth's coordinates. -> {"f@1%": ..., "chamfer": ...}"""
    if len(surface.faces) == 0:
        raise ExportError("the mesh has no faces")
    samples, _ = trimesh.sample.sample_surface(surface, n_samples, seed=seed)  # [M, 3]
    diagonal = truth.diagonal
    to_truth = cKDTree(truth.points).query(samples, workers=-1)[0]  # [M]
    to_mesh = cKDTree(samples).query(truth.points, workers=-1)[0]  # [N]
    result: dict = {"diagonal": diagonal, "truth_points": len(truth.points),
                    "mesh_samples": n_samples}
    hidden = hidden_depth(samples, truth)  # [M]
    observed_any = hidden <= max(taus) * diagonal
    for tau in taus:
        distance = tau * diagonal
        observed = hidden <= distance
        precision = float((to_truth[observed] <= distance).mean()) if observed.any() else 0.0
        recall = float((to_mesh <= distance).mean())
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        key = f"{tau * 100:g}%"
        result |= {f"f@{key}": f, f"precision@{key}": precision, f"recall@{key}": recall}
    accuracy = float(to_truth[observed_any].mean()) if observed_any.any() else float("inf")
    result["chamfer"] = 0.5 * (accuracy + float(to_mesh.mean()))
    result["chamfer_percent"] = 100 * result["chamfer"] / diagonal
    return result


def primitives_mesh(prims: Primitives, sections: int = 48) -> trimesh.Trimesh:
    """The built-in lego's exact boxes and cylinders, meshed (cylinders as `sections`-gons)."""
    parts = [trimesh.creation.box(bounds=np.stack([lo.numpy(), hi.numpy()]))
             for lo, hi in zip(prims.box_lo, prims.box_hi, strict=True)]
    to_axis = {0: trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
               1: trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]), 2: np.eye(4)}
    for center, axis, half, radius in zip(prims.cyl_center, prims.cyl_axis, prims.cyl_half,
                                          prims.cyl_radius, strict=True):
        transform = to_axis[int(axis)].copy()
        transform[:3, 3] = center.numpy()
        parts.append(trimesh.creation.cylinder(radius=float(radius), height=2 * float(half),
                                               sections=sections, transform=transform))
    return trimesh.util.concatenate(parts)


def inside_primitives(x: torch.Tensor, prims: Primitives) -> torch.Tensor:
    """Whether each point [N, 3] lies inside a box or a cylinder of the lego. -> [N] bool"""
    inside = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # [N]
    for lo, hi in zip(prims.box_lo.to(x), prims.box_hi.to(x), strict=True):
        inside |= ((x >= lo) & (x <= hi)).all(-1)
    for center, axis, half, radius in zip(prims.cyl_center.to(x), prims.cyl_axis.tolist(),
                                          prims.cyl_half.tolist(), prims.cyl_radius.tolist(),
                                          strict=True):
        rel = x - center  # [N, 3]
        near = torch.nonzero(rel.abs().amax(-1) <= max(half, radius)).flatten()  # [n]
        q = rel[near]
        along = q[:, axis]
        ok = (along.abs() <= half) & ((q * q).sum(-1) - along * along <= radius**2)
        inside[near[ok]] = True
    return inside
