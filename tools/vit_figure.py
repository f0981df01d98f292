"""The ViT's accuracy against training time over several runs, beside the first run's confusion
matrix, as one picture (the README's):

    python tools/vit_figure.py RUN_SEED0 RUN_SEED1 --out docs/images/vit_shapes_fast.png

Each RUN is a `python -m nerfx.train --model vit` run folder with its accuracy.csv (the accuracy
on the first curve_images test images every snapshot_every steps) and confusion.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nerfx.images import line_chart, write_png
from nerfx.trainers.vit import read_accuracy_curve


def figure(runs: list[Path]) -> np.ndarray:
    """[H, W, 3] uint8: the runs' curves (named by seed and final accuracy), then run 0's
    confusion matrix scaled to the chart's height."""
    curves = {}
    for run in runs:
        points = read_accuracy_curve(run)
        if not points:
            raise SystemExit(f"{run}: no accuracy.csv (a vit run with snapshot_every)")
        config = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        name = f"seed {config['seed']}: {metrics['test_accuracy']:.1%}"
        curves[name] = [(seconds, accuracy) for seconds, accuracy, _ in points]
    images = points[0][2]
    chart = line_chart(curves, "seconds of training", f"test accuracy ({images} images)")
    confusion = Image.open(runs[0] / "confusion.png").convert("RGB")
    side, names = chart.shape[0] - 36, 70        # the matrix's side; room for the class names
    confusion = confusion.resize((side, side), Image.NEAREST)
    out = Image.new("RGB", (chart.shape[1] + names + side + 12, chart.shape[0]), "white")
    out.paste(Image.fromarray(chart), (0, 0))
    out.paste(confusion, (chart.shape[1] + names, 12))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    classes = json.loads((runs[0] / "metrics.json").read_text())["classes"]
    for i, name in enumerate(classes):                # rows: the true class
        draw.text((chart.shape[1] + 6, 12 + (i + 0.5) * side / len(classes) - 6), name,
                  fill="black", font=font)
    draw.text((chart.shape[1] + names, 16 + side), "predicted class (columns), seed "
              f"{json.loads((runs[0] / 'config.json').read_text())['seed']}", fill="black",
              font=font)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_png(args.out, figure(args.runs))
    print(args.out)


if __name__ == "__main__":
    main()
