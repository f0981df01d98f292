"""Meshes and point clouds (what `python -m nerfx.export` writes: .ply, .obj, .glb) drawn in the
page beside the render, in the run's world.

The exporter writes in the dataset's world coordinates; the viewer draws in the run's (an
Instant-NGP folder's scale and offset applied). `load_geometry` takes that map (`to_run`, from
nerfx.export.frame.SceneFrame, wired by the command line) and applies it to the vertices, so
that the mesh lies where the render shows the surface. What it draws is capped (MAX_FACES,
MAX_POINTS) so that the page stays responsive: a larger mesh is simplified, a larger cloud
subsampled. Loading needs trimesh (the `export` extra).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfx.runs import RunError

GEOMETRY_SUFFIXES = (".ply", ".obj", ".glb")
MAX_FACES = 500_000        # faces drawn at most (a larger mesh is simplified)
MAX_POINTS = 200_000       # points drawn at most (a larger cloud is subsampled)


class GeometryError(RunError):
    """trimesh is not installed, or a file cannot be read as a mesh or point cloud."""


@dataclass
class Geometry:
    """One file's mesh or point cloud in the run's world. vertices [V, 3] float32; faces [F, 3]
    int64, None for a point cloud; colors [V, 3] uint8 or None; drawn_from: the faces (or points)
    in the file, when more than those drawn; visible: whether the page shows it at first."""

    path: Path
    vertices: np.ndarray
    faces: np.ndarray | None = None
    colors: np.ndarray | None = None
    drawn_from: int | None = None
    visible: bool = False

    @property
    def label(self) -> str:
        """The page's name of it: the file name and its size."""
        count = f"{len(self.faces):,} faces" if self.faces is not None \
            else f"{len(self.vertices):,} points"
        if self.drawn_from is not None:
            count += f" of {self.drawn_from:,}"
        return f"{self.path.name} ({count})"


def require_trimesh() -> None:
    """Raises GeometryError with the fix when the `export` extra is missing."""
    try:
        import trimesh  # noqa: F401
    except ImportError:
        raise GeometryError("showing meshes and point clouds needs trimesh: pip install "
                                  "'nerfx[export]' (or pip install -e '.[export]' in a "
                                  "checkout)") from None


def find_geometry(run: Path, shown: Iterable[Path] = ()) -> list[Path]:
    """The .ply, .obj and .glb files of the run folder, then those given (once each)."""
    found = sorted(p for p in Path(run).iterdir()
                   if p.is_file() and p.suffix.lower() in GEOMETRY_SUFFIXES) \
        if Path(run).is_dir() else []
    out: list[Path] = []
    for path in [*found, *map(Path, shown)]:
        if path.resolve() not in {p.resolve() for p in out}:
            out.append(path)
    return out


def load_geometry(path: Path, to_run: Callable[[np.ndarray], np.ndarray] | None = None,
                  max_faces: int = MAX_FACES, max_points: int = MAX_POINTS) -> Geometry:
    """Reads a mesh or point cloud; to_run maps points [V, 3] of the file (the dataset's world)
    to the run's (None: they are the same)."""
    require_trimesh()
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in GEOMETRY_SUFFIXES:
        raise GeometryError(f"{path}: the viewer shows {', '.join(GEOMETRY_SUFFIXES)} "
                                  "files")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as exc:   # trimesh raises many kinds for a bad file
        raise GeometryError(f"{path}: not a mesh or point cloud ({exc})") from None
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry()   # the scene graph's transforms applied
    drawn_from = None
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
        if len(loaded.faces) > max_faces:
            drawn_from = len(loaded.faces)
            loaded = _simplify(loaded, max_faces)
        vertices, faces = np.asarray(loaded.vertices), np.asarray(loaded.faces, dtype=np.int64)
        colors = _vertex_colors(loaded)
    elif isinstance(loaded, trimesh.PointCloud | trimesh.Trimesh) and len(loaded.vertices):
        vertices, faces = np.asarray(loaded.vertices), None
        colors = np.asarray(loaded.colors)[:, :3].astype(np.uint8) \
            if isinstance(loaded, trimesh.PointCloud) and len(loaded.colors) else None
        if len(vertices) > max_points:
            drawn_from = len(vertices)
            keep = np.sort(np.random.default_rng(0).choice(len(vertices), max_points,
                                                           replace=False))
            vertices = vertices[keep]
            colors = colors[keep] if colors is not None else None
    else:
        raise GeometryError(f"{path}: holds no mesh or point cloud")
    if to_run is not None:
        vertices = np.asarray(to_run(vertices))
    return Geometry(path, vertices.astype(np.float32), faces, colors, drawn_from)


def _vertex_colors(mesh) -> np.ndarray | None:
    visual = mesh.visual
    if getattr(visual, "kind", None) != "vertex":
        return None
    return np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)


def _simplify(mesh, max_faces: int):
    """Quadric decimation to max_faces (fast-simplification, in the `export` extra); without
    it, an even subset of the faces."""
    try:
        return mesh.simplify_quadric_decimation(face_count=max_faces)
    except ImportError:
        import trimesh
        keep = np.sort(np.random.default_rng(0).choice(len(mesh.faces), max_faces,
                                                       replace=False))
        return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False,
                               vertex_colors=_vertex_colors(mesh))


def add_to_scene(server, name: str, geometry: Geometry, point_size: float):
    """Draws the geometry in a viser scene under /geometry/<name>; -> its handle."""
    node, visible = f"/geometry/{name}", geometry.visible
    if geometry.faces is None:
        colors = geometry.colors if geometry.colors is not None else (120, 120, 120)
        return server.scene.add_point_cloud(node, points=geometry.vertices, colors=colors,
                                            point_size=point_size, precision="float32",
                                            visible=visible)
    if geometry.colors is None:
        return server.scene.add_mesh_simple(node, geometry.vertices, geometry.faces,
                                            color=(170, 170, 170), side="double",
                                            visible=visible)
    return server.scene.add_glb(node, unlit_glb(geometry), visible=visible)


def unlit_glb(geometry: Geometry) -> bytes:
    """A coloured mesh as binary glTF whose material is unlit (KHR_materials_unlit): the page
    shows the field's colours as they are, as the render does. (trimesh writes no material, and
    glTF's default one is metallic: black without an environment map.) glTF's vertex colours
    are linear: the sRGB colours are converted, as floats (8 bits would band the dark ones)."""
    import trimesh
    mesh = trimesh.Trimesh(geometry.vertices, geometry.faces, process=False)
    glb = trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh))
    json_length = struct.unpack_from("<I", glb, 12)[0]
    gltf = json.loads(glb[20:20 + json_length])
    binary = glb[20 + json_length + 8:]                  # the BIN chunk's data (4-aligned)
    srgb = np.asarray(geometry.colors, dtype=np.float32) / 255   # [V, 3]
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    colors = linear.astype("<f4").tobytes()
    gltf["bufferViews"].append({"buffer": 0, "byteOffset": len(binary),
                                "byteLength": len(colors)})
    gltf["accessors"].append({"bufferView": len(gltf["bufferViews"]) - 1, "componentType": 5126,
                              "count": len(linear), "type": "VEC3"})
    binary += colors
    gltf["buffers"][0]["byteLength"] = len(binary)
    gltf["materials"] = [{"pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0},
                          "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}]
    gltf["extensionsUsed"] = [*gltf.get("extensionsUsed", []), "KHR_materials_unlit"]
    for primitive in (p for m in gltf["meshes"] for p in m["primitives"]):
        primitive["material"] = 0
        primitive["attributes"]["COLOR_0"] = len(gltf["accessors"]) - 1
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)                      # chunks are 4-byte aligned
    body = struct.pack("<I4s", len(text), b"JSON") + text + \
        struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body
