"""A mesh of a trained radiance field: marching cubes (scikit-image) over its density on a
lattice, in the dataset's world coordinates, with colours queried from the field.

    from nerfx.export import mesh
    m = mesh(pipeline, resolution=256)              # m.vertices [V, 3], m.faces [F, 3], m.colors

- Density: sigma of the field (its EMA weights, as load_pipeline gives them) at
  resolution points along the box's longest side; the surface is where it crosses `threshold`,
  a density per dataset unit (nerfx.export.frame says how instant-ngp's units convert).
- Normals: from the mesh, area-weighted face normals at each vertex (trimesh), pointing out of
  the object (towards lower density). -grad(sigma) of a hash-grid field is noisy at the
  resolution of its finest level, and the mesh's own normals agree with how its faces shade.
- Colours: the field's colour at each vertex seen along -normal, i.e. by a camera looking
  straight at the surface there: the view least affected by view-dependent effects at grazing
  angles, and one that exists for every vertex (the training cameras do not see every vertex).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes
from torch import nn

from nerfx.export.density import (
    CHUNK,
    ExportError,
    RadianceField,
    can_skip_empty,
    check_memory,
    density_lattice,
    lattice_shape,
    radiance_field,
)
from nerfx.export.frame import SceneFrame


class Mesh(NamedTuple):
    vertices: np.ndarray  # [V, 3] float32, the dataset's world coordinates
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    colors: np.ndarray  # [V, 3] uint8 RGB
    normals: np.ndarray  # [V, 3] float32 unit, outwards


def mesh(pipeline: nn.Module | RadianceField, *, resolution: int = 256,
         threshold: float | None = None, crop: tuple[float, ...] | None = None,
         frame: SceneFrame | None = None, largest_components: int | None = None,
         max_faces: int | None = None, chunk: int = CHUNK, progress: bool = True) -> Mesh:
    """Marching cubes over a trained pipeline's density.

    threshold: density per dataset unit (default: 25 in instant-ngp's box, converted by
    `frame`; nerfx.export.frame); crop: [6] box (x0, y0, z0, x1, y1, z1) in the dataset's
    coordinates (default: the scene box, cascade 0 of the occupancy grid); frame: the
    dataset-to-run transform (default: identity, NeRF-synthetic); largest_components: keep only
    that many connected components, the largest by face count; max_faces: simplify (quadric
    decimation) to at most that many faces.
    """
    field = pipeline if isinstance(pipeline, RadianceField) else radiance_field(pipeline)
    frame = frame or SceneFrame()
    threshold = frame.default_threshold if threshold is None else float(threshold)
    if not threshold > 0:
        raise ExportError(f"threshold must be a positive density, got {threshold}")
    volume, box = density_volume(field, resolution=resolution, threshold=threshold, crop=crop,
                                 frame=frame, chunk=chunk, progress=progress)
    return surface_from_volume(field, volume, box, threshold, frame, largest_components,
                               max_faces, chunk)


def density_volume(field: RadianceField, *, resolution: int = 256, threshold: float,
                   crop: tuple[float, ...] | None = None, frame: SceneFrame | None = None,
                   chunk: int = CHUNK, progress: bool = True
                   ) -> tuple[np.ndarray, tuple[float, ...]]:
    """-> (sigma [nx, ny, nz] float32 per run unit, the lattice's box [6] in run units). Empty
    cells of the occupancy grid are skipped where the threshold allows (nerfx.export.density)."""
    frame = frame or SceneFrame()
    if resolution < 8:
        raise ExportError(f"resolution must be at least 8, got {resolution}")
    box = field.box if crop is None else crop_to_run(crop, frame)
    shape = lattice_shape(box, resolution)
    check_memory(shape)
    level = frame.density_to_run(threshold)
    volume = density_lattice(field, box, shape, skip_empty=can_skip_empty(field, level),
                             chunk=chunk, progress=progress)  # [nx, ny, nz]
    return volume, box


def surface_from_volume(field: RadianceField, volume: np.ndarray, box: tuple[float, ...],
                        threshold: float, frame: SceneFrame | None = None,
                        largest_components: int | None = None, max_faces: int | None = None,
                        chunk: int = CHUNK) -> Mesh:
    """Marching cubes of a density volume (density_volume's) at `threshold` per dataset unit,
    cleaned, with normals and colours."""
    frame = frame or SceneFrame()
    level = frame.density_to_run(threshold)
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < level < hi:
        raise ExportError(no_surface_message(threshold, volume, frame))
    spacing = tuple((box[3 + i] - box[i]) / (n - 1) for i, n in enumerate(volume.shape))
    verts, faces, _, _ = marching_cubes(volume, level, spacing=spacing, allow_degenerate=False)
    # scikit-image winds its faces clockwise seen from the low side for a dense object (the
    # normals it returns are separate); reversed, they wind counter-clockwise seen from outside.
    faces = np.ascontiguousarray(faces[:, ::-1])
    verts = verts + np.asarray(box[:3], dtype=np.float32)  # [V, 3] run units
    surface = trimesh.Trimesh(frame.to_dataset(verts.astype(np.float64)), faces, process=True)
    surface = clean(surface, largest_components, max_faces)
    normals = np.asarray(surface.vertex_normals, dtype=np.float32)  # [V, 3]
    colors = vertex_colors(field, frame.to_run(surface.vertices), normals, chunk)
    return Mesh(surface.vertices.astype(np.float32), surface.faces.astype(np.int64), colors,
                normals)


def crop_to_run(crop: tuple[float, ...], frame: SceneFrame) -> tuple[float, ...]:
    """A crop box [6] in dataset coordinates -> run coordinates, refused when empty."""
    if len(crop) != 6 or not all(np.isfinite(crop)):
        raise ExportError(f"crop box must be 6 finite numbers x0,y0,z0,x1,y1,z1, got {crop}")
    lo, hi = np.asarray(crop[:3], dtype=np.float64), np.asarray(crop[3:], dtype=np.float64)
    if not (hi > lo).all():
        raise ExportError(f"crop box must have x1 > x0, y1 > y0, z1 > z0, got {list(crop)}")
    lo, hi = frame.to_run(lo), frame.to_run(hi)
    return tuple(float(v) for v in np.concatenate([np.minimum(lo, hi), np.maximum(lo, hi)]))


def no_surface_message(threshold: float, volume: np.ndarray, frame: SceneFrame) -> str:
    """Says that the threshold crosses no surface and which densities the field has."""
    values = frame.density_to_dataset(1.0) * volume[volume > 0]
    if values.size == 0:
        return (f"threshold {threshold:g} leaves no surface: the field's density is 0 "
                "everywhere in the box (is the crop box around the object?)")
    low, q50, q99, top = np.quantile(values, [0.0, 0.5, 0.99, 1.0])
    where = (f"denser than that everywhere in the box (from {low:.3g}" if threshold <= low
             else f"thinner than that everywhere in the box (up to {top:.3g}")
    return (f"threshold {threshold:g} leaves no surface: the field is {where} per unit, median "
            f"{q50:.3g}); try a threshold between {q50:.3g} and {q99:.3g}")


def clean(surface: trimesh.Trimesh, largest_components: int | None,
          max_faces: int | None) -> trimesh.Trimesh:
    """Keeps the largest connected components and simplifies to a face budget, as asked."""
    if largest_components is not None:
        if largest_components < 1:
            raise ExportError(f"largest components must be at least 1, got {largest_components}")
        parts = surface.split(only_watertight=False)
        parts = sorted(parts, key=lambda part: len(part.faces), reverse=True)
        surface = trimesh.util.concatenate(parts[:largest_components])
    if max_faces is not None:
        if max_faces < 4:
            raise ExportError(f"max faces must be at least 4, got {max_faces}")
        if len(surface.faces) > max_faces:
            surface = surface.simplify_quadric_decimation(face_count=max_faces)
    return surface


@torch.no_grad()
def vertex_colors(field: RadianceField, points_run: np.ndarray, normals: np.ndarray,
                  chunk: int = CHUNK) -> np.ndarray:
    """The field's colour at points [V, 3] (run units) seen along -normal [V, 3]. -> uint8."""
    out = np.zeros((len(points_run), 3), dtype=np.uint8)
    for i in range(0, len(points_run), chunk):
        x = torch.as_tensor(points_run[i:i + chunk], dtype=torch.float32, device=field.device)
        d = -torch.as_tensor(normals[i:i + chunk], dtype=torch.float32, device=field.device)
        rgb = field.color(x, torch.nn.functional.normalize(d, dim=-1)).float()  # [c, 3]
        out[i:i + chunk] = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return out


MESH_FORMATS = {".ply": "ply", ".obj": "obj", ".glb": "glb"}


def mesh_bytes(m: Mesh, suffix: str) -> bytes:
    """The mesh as a file: binary PLY with colours and normals, OBJ (colours and normals per
    vertex), or binary glTF (GLB), by suffix."""
    if suffix not in MESH_FORMATS:
        raise ExportError(f"unknown mesh format {suffix!r}: use {', '.join(MESH_FORMATS)}")
    surface = trimesh.Trimesh(m.vertices, m.faces, vertex_normals=m.normals,
                              vertex_colors=m.colors, process=False)
    if suffix == ".ply":
        return trimesh.exchange.ply.export_ply(surface, encoding="binary", vertex_normal=True)
    if suffix == ".obj":
        return trimesh.exchange.obj.export_obj(surface, include_normals=True,
                                               include_color=True).encode()
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(surface), include_normals=True)
