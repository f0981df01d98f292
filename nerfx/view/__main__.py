"""`python -m nerfx.view RUN`: fly through a trained radiance field in the browser.

Serves a page (viser) that shows the run's render (its EMA weights, nerfx's compacting renderer)
from the browser's camera, with its training cameras and scene box, until Ctrl-C. The meshes and
point clouds of the run folder (RUN/*.ply, *.obj, *.glb: what python -m nerfx.export writes) and
those given with --show are drawn in the same scene, each with a toggle. The page binds
127.0.0.1 unless --host says otherwise; nothing is sent outside this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.models.pipelines import load_pipeline
from nerfx.ops import use_backend
from nerfx.view import open_viewer, require_viser
from nerfx.view.geometry import (
    Geometry,
    GeometryError,
    find_geometry,
    load_geometry,
    require_trimesh,
)
from nerfx.view.server import Viewer, is_loopback
from nerfx.view.sources import run_scene


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """--host and --port, shared with python -m nerfx.train --view."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080,
                   help="port (default 8080; the next free one when taken; 0: any free one)")


def announce(prog: str, viewer: Viewer, what: str) -> None:
    """The one line a user needs: where the page is (and a warning when it is exposed)."""
    address = viewer.address
    if address.requested_port and address.port != address.requested_port:
        print(f"{prog}: port {address.requested_port} is in use; took {address.port}",
              flush=True)
    if not is_loopback(address.host):
        print(f"{prog}: warning: serving on {address.host}: anyone who can reach it sees the "
              "page and can pause training; it has no authentication", file=sys.stderr,
              flush=True)
    print(f"{prog}: {what} at {address.url} (Ctrl-C to stop)", flush=True)


def wait_for_interrupt(viewer: Viewer) -> None:
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.view", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder written by python -m nerfx.train")
    p.add_argument("--show", type=Path, action="append", default=[], metavar="PATH",
                   help="a mesh or point cloud (.ply, .obj, .glb, in the dataset's coordinates, "
                        "as python -m nerfx.export writes them) to draw, shown at first; "
                        "repeatable. Those in RUN are drawn too, hidden at first")
    add_serve_options(p)
    add_device_option(p)
    add_backend_option(p)
    args = p.parse_args(argv)
    if not 0 <= args.port < 65536:
        p.error(f"--port must be in 0..65535, got {args.port}")
    return args


def dataset_to_run(config: dict) -> Callable[[np.ndarray], np.ndarray] | None:
    """How the exporter's coordinates (the dataset's) map to the run's: the scene frame of
    nerfx.export, from the run's scene folder; None (as they are) where that folder is gone."""
    try:
        from nerfx.export.frame import scene_frame
    except ImportError as exc:   # nerfx.export's own needs (the `export` extra)
        raise GeometryError(f"showing meshes needs the `export` extra ({exc}): pip install "
                            "'nerfx[export]'") from None
    try:
        return scene_frame(config["scene"]).to_run
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"nerfx.view: meshes are drawn as written: the scene's scale and offset "
                      f"are unknown ({exc})", stacklevel=2)
        return None


def run_geometry(run: Path, shown: list[Path], config: dict) -> list[Geometry]:
    """The meshes and point clouds to draw: those of the run folder (hidden at first), then
    those given (shown at first). A --show file that cannot be drawn is an error; a run
    folder's is skipped with a warning (and all of them without the `export` extra)."""
    for path in shown:
        if not path.is_file():
            raise GeometryError(f"{path}: no such mesh or point cloud file")
    given = {p.resolve() for p in shown}
    paths = find_geometry(run, shown)
    if not paths:
        return []
    try:
        require_trimesh()
        to_run = dataset_to_run(config)
    except GeometryError as exc:
        if shown:
            raise
        warnings.warn(f"nerfx.view: the run's meshes are not shown: {exc}", stacklevel=2)
        return []
    out = []
    for path in paths:
        try:
            item = load_geometry(path, to_run)
        except GeometryError as exc:
            if path.resolve() in given:
                raise
            warnings.warn(f"nerfx.view: not shown: {exc}", stacklevel=2)
            continue
        item.visible = path.resolve() in given
        out.append(item)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with user_errors("nerfx.view"), use_backend(args.backend):
        require_viser()
        pipeline, config = load_pipeline(args.run, args.device)
        geometry = run_geometry(args.run, args.show, config)
        viewer = open_viewer(pipeline, run_scene(config, pipeline), args.run, host=args.host,
                             port=args.port, geometry=geometry)
        viewer.start()
        announce("nerfx.view", viewer, f"serving {args.run}")
    wait_for_interrupt(viewer)


if __name__ == "__main__":
    main()
