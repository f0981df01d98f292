"""`python -m nerfx.export {mesh,pointcloud,cameras} RUN --out PATH`: a trained run's geometry
and cameras as files, in the dataset's world coordinates.

  mesh        marching cubes over the density (EMA weights): .ply (binary, colours, normals),
              .obj or .glb; --compare SCENE scores it against a scene with depth maps
  pointcloud  training rays of high opacity at their expected depth, with colours (.ply)
  cameras     training and test cameras as transforms.json (.json)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trimesh

from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.data.scenes import load_scene
from nerfx.export.accuracy import compare, load_truth
from nerfx.export.cameras import cameras_json
from nerfx.export.density import ExportError
from nerfx.export.files import check_output, write_bytes, write_json
from nerfx.export.frame import DEFAULT_NGP_THRESHOLD, NGP_MESH_THRESHOLD, scene_frame
from nerfx.export.mesh import MESH_FORMATS, mesh, mesh_bytes
from nerfx.export.points import pointcloud, pointcloud_bytes
from nerfx.models.pipelines import MODELS, load_pipeline
from nerfx.ops import use_backend
from nerfx.runs import read_run_config

PROG = "python -m nerfx.export"
THRESHOLD_HELP = (
    "surface density, per unit length of the dataset's world coordinates (the unit the mesh is "
    f"written in); default: {DEFAULT_NGP_THRESHOLD:g} in instant-ngp's normalised box (whose "
    f"own default is {NGP_MESH_THRESHOLD}), converted for the run's scene: x0.33 for a "
    "NeRF-synthetic scene, x its scale for an Instant-NGP folder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    commands = p.add_subparsers(dest="command", required=True)
    m = commands.add_parser("mesh", help="marching-cubes mesh (.ply, .obj, .glb)")
    m.add_argument("--resolution", type=int, default=256,
                   help="lattice points along the box's longest side (default 256, "
                        "instant-ngp's)")
    m.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    m.add_argument("--crop", help="box x0,y0,z0,x1,y1,z1 in the dataset's coordinates "
                                  "(default: the scene box, cascade 0)")
    m.add_argument("--largest-components", type=int, metavar="K",
                   help="keep only the K largest connected components (by faces)")
    m.add_argument("--max-faces", type=int, help="simplify to at most this many faces")
    m.add_argument("--compare", type=Path, metavar="SCENE",
                   help="score the mesh against a scene folder with depth maps (the built-in "
                        "lego): F-score at 1%% and 2%% of its diagonal, Chamfer distance")
    pc = commands.add_parser("pointcloud", help="points of the training rays (.ply)")
    pc.add_argument("--n", type=int, default=100_000, help="points (default 100000)")
    pc.add_argument("--min-opacity", type=float, default=0.9,
                    help="keep rays at least this opaque (default 0.9)")
    pc.add_argument("--seed", type=int, default=0, help="which training pixels (default 0)")
    commands.add_parser("cameras", help="training and test cameras (transforms .json)")
    for sub in commands.choices.values():
        sub.add_argument("run", type=Path, help="run folder written by python -m nerfx.train")
        sub.add_argument("--out", type=Path, required=True,
                         help="output file; its extension picks the format")
        sub.add_argument("--force", action="store_true", help="replace an existing --out")
        add_device_option(sub)
        add_backend_option(sub)
    return p.parse_args(argv)


@contextmanager
def export_errors() -> Iterator[None]:
    try:
        yield
    except ExportError as exc:
        raise SystemExit(f"nerfx.export: {exc}") from None


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    with user_errors("nerfx.export"), export_errors(), use_backend(args.backend):
        suffixes = {"mesh": tuple(MESH_FORMATS), "pointcloud": (".ply",),
                    "cameras": (".json",)}[args.command]
        check_output(args.out, suffixes, args.force)
        return {"mesh": export_mesh, "pointcloud": export_pointcloud,
                "cameras": export_cameras}[args.command](args)


def parse_crop(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ExportError(f"--crop: expected x0,y0,z0,x1,y1,z1, got {text!r}") from None
    if len(values) != 6:
        raise ExportError(f"--crop: expected 6 numbers x0,y0,z0,x1,y1,z1, got {text!r}")
    return values


def export_mesh(args: argparse.Namespace) -> Path:
    crop = parse_crop(args.crop)
    truth = load_truth(args.compare) if args.compare else None  # its errors before the work
    read_run_config(args.run, MODELS)  # a missing or wrong run: one line, before the weights
    pipeline, config = load_pipeline(args.run, args.device)
    frame = scene_frame(config["scene"])
    threshold = frame.default_threshold if args.threshold is None else args.threshold
    start = time.perf_counter()
    m = mesh(pipeline, resolution=args.resolution, threshold=threshold, crop=crop, frame=frame,
             largest_components=args.largest_components, max_faces=args.max_faces)
    seconds = time.perf_counter() - start
    write_bytes(args.out, mesh_bytes(m, args.out.suffix.lower()))
    print(f"nerfx.export: {len(m.vertices)} vertices, {len(m.faces)} faces (threshold "
          f"{threshold:g} per unit, resolution {args.resolution}, {seconds:.1f} s) -> {args.out}")
    if truth is not None:
        scores = compare(trimesh.Trimesh(m.vertices, m.faces, process=False), truth)
        print("nerfx.export: vs " + str(args.compare) + ": " + ", ".join(
            f"{key} {value:.4f}" for key, value in scores.items()
            if key.startswith(("f@", "precision@", "recall@", "chamfer"))))
    return args.out


def export_pointcloud(args: argparse.Namespace) -> Path:
    pipeline, config = load_pipeline(args.run, args.device)
    scene = load_scene(config["scene"], "train", downscale=config["load_downscale"],
                       test_every=config["settings"]["test_every"])
    points, colors = pointcloud(pipeline, scene, n=args.n, min_opacity=args.min_opacity,
                                frame=scene_frame(config["scene"]), seed=args.seed,
                                device=args.device)
    write_bytes(args.out, pointcloud_bytes(points, colors))
    print(f"nerfx.export: {len(points)} points -> {args.out}")
    return args.out


def export_cameras(args: argparse.Namespace) -> Path:
    config = read_run_config(args.run, MODELS)
    cameras = cameras_json(config)
    write_json(args.out, cameras)
    splits = [f["split"] for f in cameras["frames"]]
    print(f"nerfx.export: {splits.count('train')} train and {splits.count('test')} test "
          f"cameras -> {args.out}")
    return args.out


if __name__ == "__main__":
    sys.exit(main() and 0)
