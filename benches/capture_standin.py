"""A stand-in for a phone capture of the fox's size, for timing the CPU recipe on one when no real
capture is at hand (none can be downloaded here): the built-in room rendered at a quarter of
the size (2 x 2 supersampled, through its lens), upsampled 4x to 1920 x 1440 photos and written
as JPEG, as a phone writes them. Two folders come out of it: Instant-NGP's layout (OUT/ngp: one
transforms.json with the lens, `aabb_scale` 4) and a COLMAP model of the same photos
(OUT/colmap: sparse/0 in binary, one OPENCV camera, sparse points from the depth maps, in a world
turned, moved and scaled from the room's).

    python -m benches.capture_standin /tmp/standin
    python -m nerfx.train --data /tmp/standin/ngp --fast
    python -m nerfx.train --data /tmp/standin/colmap --fast

The photos hold the detail of 480 x 360 renders: the CPU recipe trains at 1/8 of the photos'
size (240 x 180), below it, so what the stand-in times faithfully is the capture's size on disk
(decoding 50 photos of 2.8 Mpx), the lens, the scene's extent and the views.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from nerfx.data import room
from tests.data.colmap_writer import room_as_colmap

UPSCALE = 4            # photo pixels per rendered pixel, per axis
RENDER_WIDTH = 480     # pixels: the room's render (the photos are UPSCALE times wider)
JPEG_QUALITY = 92      # a phone camera's usual setting


def build(out: Path, render_width: int = RENDER_WIDTH) -> tuple[Path, Path]:
    """Writes OUT/ngp and OUT/colmap (each once) and returns them."""
    ngp, colmap = out / "ngp", out / "colmap"
    if not (ngp / "transforms.json").is_file():
        rendered = room.generate(render_width, root=out / "render")
        meta = json.loads((rendered / "transforms.json").read_text())
        staging = Path(tempfile.mkdtemp(prefix=".ngp-", dir=out))
        (staging / "images").mkdir()
        (staging / "depth").mkdir()
        width, height = meta["w"] * UPSCALE, meta["h"] * UPSCALE
        for frame in tqdm(meta["frames"], desc="photos", unit="img"):
            name = Path(frame["file_path"]).with_suffix(".jpg").name
            with Image.open(rendered / frame["file_path"]) as image:
                image.resize((width, height), Image.Resampling.BICUBIC).save(
                    staging / "images" / name, quality=JPEG_QUALITY)
            # Depth for the COLMAP model's sparse points: each rendered pixel's value repeated.
            depth = np.load(rendered / frame["depth_path"])
            np.save(staging / "depth" / Path(frame["depth_path"]).name,
                    depth.repeat(UPSCALE, 0).repeat(UPSCALE, 1))
            frame["file_path"] = f"images/{name}"
        # Pixel coordinates scale with the image (a pixel's edges, not its centre, at 0 and w).
        meta.update(w=width, h=height, **{k: meta[k] * UPSCALE for k in ("fl_x", "fl_y", "cx",
                                                                          "cy")})
        (staging / "transforms.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(ngp, ignore_errors=True)
        staging.rename(ngp)
    if not (colmap / "sparse" / "0" / "images.bin").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".colmap-", dir=out))
        # About 25k points a view, as a sparse model of a capture this size holds.
        room_as_colmap(ngp, staging / "model", binary=True, point_stride=7 * UPSCALE**2)
        shutil.rmtree(colmap, ignore_errors=True)
        (staging / "model").rename(colmap)
        shutil.rmtree(staging)
    return ngp, colmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the two captures into")
    parser.add_argument("--render-width", type=int, default=RENDER_WIDTH)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in build(args.out, args.render_width):
        print(folder)


if __name__ == "__main__":
    main()
