"""Mesh export: how long a 256^3 export of a run takes, how accurate it is against the built-in
lego's depth maps at each threshold (the sweep behind the default), and a picture of it.

    python -m benches.bench_export RUN [--scene SCENE] [--sweep 0.5,1,2.5,5,10,25,50]
                                       [--picture docs/images/export_mesh.png]
    python -m pytest benches/bench_export.py --benchmark-only   # density lattice throughput

Thresholds are given in instant-ngp's normalised-box units (2.5 is its default) and converted
per scene (nerfx.export.frame). SCENE defaults to the run's own scene folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from benches.helpers import run_benchmark
from nerfx.cameras import look_at, project
from nerfx.data.lego import build_vehicle
from nerfx.export import RadianceField, radiance_field, scene_frame
from nerfx.export.accuracy import compare, inside_primitives, load_truth
from nerfx.export.density import density_lattice, lattice_shape
from nerfx.export.mesh import density_volume, mesh, surface_from_volume
from nerfx.images import write_png
from nerfx.models.pipelines import build_pipeline, load_pipeline


def test_density_lattice(benchmark):
    """Field queries per second on a 64^3 lattice of an (untrained) Instant-NGP field, CPU."""
    pipeline = build_pipeline({"name": "ngp", "aabb": [-1.5] * 3 + [1.5] * 3,
                               "log2_hashmap_size": 17}).eval()
    field = radiance_field(pipeline)
    shape = lattice_shape(field.box, 64)
    run_benchmark(benchmark, lambda: density_lattice(field, field.box, shape, progress=False),
                  "cpu", "export density lattice 64^3", int(np.prod(shape)), "points")


def splat_picture(surface: trimesh.Trimesh, colors: np.ndarray, eye: tuple[float, ...],
                  size: int = 360, samples: int = 1_500_000) -> np.ndarray:
    """A picture of a coloured mesh: dense surface samples z-buffered into the image, shaded by
    their face normal towards the eye. -> uint8 [size, size, 3], white background."""
    points, faces = trimesh.sample.sample_surface(surface, samples, seed=0)
    rgb = colors[surface.faces[faces]].mean(1) / 255  # [M, 3]
    pose = torch.from_numpy(look_at(np.asarray(eye))).float()
    focal = size / 2 / np.tan(0.6911 / 2)
    uv, depth = project(torch.from_numpy(points).float(), torch.linalg.inv(pose),
                        torch.tensor([focal, focal, size / 2, size / 2]))
    to_eye = np.asarray(eye) - points
    to_eye /= np.linalg.norm(to_eye, axis=1, keepdims=True)
    shade = 0.45 + 0.55 * np.abs((surface.face_normals[faces] * to_eye).sum(1))
    u, v = uv[:, 0].long().numpy(), uv[:, 1].long().numpy()
    keep = (depth.numpy() > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
    order = np.argsort(-depth.numpy()[keep])  # far first: nearer samples overwrite
    image = np.ones((size, size, 3))
    image[v[keep][order], u[keep][order]] = (rgb * shade[:, None])[keep][order]
    return (image * 255 + 0.5).clip(0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benches.bench_export")
    p.add_argument("run", type=Path)
    p.add_argument("--scene", type=Path, help="scene with depth maps (default: the run's)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--sweep", default="0.5,1,2.5,5,10,25,50",
                   help="thresholds in instant-ngp's box units")
    p.add_argument("--picture", type=Path, help="PNG of the default mesh from two viewpoints")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    pipeline, config = load_pipeline(args.run, "cpu")
    frame = scene_frame(config["scene"])
    field = radiance_field(pipeline)
    start = time.perf_counter()
    m = mesh(pipeline, resolution=args.resolution, frame=frame, progress=False)
    seconds = time.perf_counter() - start
    print(f"default export ({frame.default_threshold:g} per unit, {args.resolution}): "
          f"{seconds:.2f} s, {len(m.vertices)} vertices, {len(m.faces)} faces, "
          f"threads {torch.get_num_threads()}")
    truth = load_truth(args.scene or config["scene"])
    print(f"truth: {len(truth.points)} points, diagonal {truth.diagonal:.4f}")
    keys = ("f@1%", "f@2%", "precision@1%", "recall@1%", "precision@2%", "recall@2%",
            "chamfer_percent")
    print("| threshold (ngp box) | per dataset unit | faces | " + " | ".join(keys) + " |")
    volume, box = density_volume(field, resolution=args.resolution, threshold=1e9, frame=frame,
                                 progress=False)  # every point queried: any threshold may cut
    for ngp_value in (float(v) for v in args.sweep.split(",")):
        threshold = ngp_value * frame.ngp_scale
        surface = surface_from_volume(field, volume, box, threshold, frame)
        scores = compare(trimesh.Trimesh(surface.vertices, surface.faces, process=False), truth)
        print(f"| {ngp_value:g} | {threshold:.3g} | {len(surface.faces)} | " +
              " | ".join(f"{scores[k]:.3f}" for k in keys) + " |")
    prims = build_vehicle()
    exact = RadianceField(lambda x: 100 * inside_primitives(x, prims).float(),
                          lambda x, d: torch.full_like(x, 0.5), field.box)
    exact_mesh = mesh(exact, resolution=args.resolution, threshold=50, progress=False)
    scores = compare(trimesh.Trimesh(exact_mesh.vertices, exact_mesh.faces), truth)
    print("exact occupancy meshed: " + ", ".join(f"{k} {scores[k]:.3f}" for k in keys))
    if args.picture:
        surface = trimesh.Trimesh(m.vertices, m.faces, process=False)
        views = [splat_picture(surface, m.colors, eye)
                 for eye in ((2.6, -2.6, 1.8), (-2.8, 1.6, 2.2))]
        write_png(args.picture, np.concatenate(views, 1))
        print(f"picture -> {args.picture}")


if __name__ == "__main__":
    main()
