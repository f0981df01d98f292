"""Writes the UCI handwritten digits (scikit-learn's `load_digits`: 1,797 scans of 8x8 pixels,
16 grey levels, 10 classes) as an image folder that `folder:PATH` reads:

    pip install scikit-learn
    python tools/digits_folder.py data/digits      # data/digits/<0..9>/<index>.png
    python -m nerfx.train --model ddpm --data folder:data/digits --fast

The images keep their 8x8 pixels (grey levels 0..16 scaled to 0..255); the trainers resize them
to their --image-size. nerfx holds out 10 % of each class for testing (a fixed, seeded split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(scans: np.ndarray, labels: np.ndarray, out: Path) -> int:
    """scans [N, H, W] with grey levels 0..16, labels [N] -> out/<label>/<index>.png; returns N."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; choose a new folder")
    images = np.rint(scans * (255 / 16)).astype(np.uint8)  # [N, H, W], 0..16 -> 0..255
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    return len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created; must be empty)")
    args = parser.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("tools/digits_folder.py needs scikit-learn: "
                         "pip install scikit-learn") from None
    digits = load_digits()
    count = write_folder(digits.images, digits.target, args.out)
    print(f"{args.out}: {count} images in {len(set(digits.target))} class folders")


if __name__ == "__main__":
    main()
