"""`python -m nerfx.render RUN [--video]`: render a trained run from its checkpoint.

Without --video: the scene's test views (or --views 0,5,9), each as rgb, depth and rgb beside
the ground truth, in RUN/render/. With --video: a turntable around the scene at the training
cameras' distance, RUN/turntable.mp4 (or .gif without imageio-ffmpeg).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from nerfx.cli import add_backend_option, add_device_option, user_errors
from nerfx.data.scenes import load_scene
from nerfx.models.pipelines import load_pipeline
from nerfx.ops import use_backend
from nerfx.render.evaluate import evaluate_views
from nerfx.render.views import render_turntable
from nerfx.runs import RunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nerfx.render", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder written by python -m nerfx.train")
    p.add_argument("--video", action="store_true", help="render a turntable video")
    p.add_argument("--frames", type=int, default=120, help="turntable frames")
    p.add_argument("--elevation", type=float, help="turntable elevation in degrees")
    p.add_argument("--views", help="test views to render, e.g. 0,5,9 (default: all)")
    p.add_argument("--out", type=Path, help="output folder (default: the run folder)")
    add_device_option(p)
    add_backend_option(p)  # not the training run's: a run trained on CUDA renders on the CPU
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames must be at least 1, got {args.frames}")
    return args


def render_test_views(pipeline, config: dict, views: str | None, out: Path) -> list[Path]:
    scene = load_scene(config["scene"], "test", downscale=config["load_downscale"],
                       test_every=config["settings"]["test_every"])
    try:
        chosen = range(len(scene)) if views is None else [int(v) for v in views.split(",")]
    except ValueError:
        raise RunError(f"--views: expected indices like 0,5,9, got {views!r}") from None
    bad = [v for v in chosen if not 0 <= v < len(scene)]
    if bad:
        raise RunError(f"--views: {bad} out of range; the test split has {len(scene)} views")
    out.mkdir(parents=True, exist_ok=True)
    scores = evaluate_views(
        pipeline, scene, tqdm(chosen, desc="views", unit="view"), out,
        files={"rgb": "rgb", "depth": "depth", "vs_gt": "vs_gt"}, with_ssim=False,
        on_view=lambda s: tqdm.write(f"view {s.view}: PSNR {s.psnr:.2f} dB"))
    return [out / f"rgb_{s.view:03d}.png" for s in scores]


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    with user_errors("nerfx.render"), use_backend(args.backend):
        return render(args)


def render(args: argparse.Namespace) -> list[Path]:
    pipeline, config = load_pipeline(args.run, args.device)
    out = args.out or args.run
    if args.video:
        turntable = dict(config["turntable"])
        if args.elevation is not None:
            turntable["elevation_deg"] = args.elevation
        out.mkdir(parents=True, exist_ok=True)
        path = render_turntable(pipeline, config["camera"], turntable, args.frames,
                                out / "turntable")
        print(f"nerfx.render: {args.frames} frames -> {path}")
        return [path]
    written = render_test_views(pipeline, config, args.views, out / "render")
    print(f"nerfx.render: {len(written)} views -> {out / 'render'}")
    return written


if __name__ == "__main__":
    sys.exit(main() and 0)
