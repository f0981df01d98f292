"""tools/: the digits folder writer produces a folder that `folder:PATH` reads back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfx.data.image_readers import load_image_folder

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_folder_round_trips_through_the_folder_loader(tmp_path):
    digits = _tool("digits_folder")
    rng = np.random.default_rng(0)
    scans = rng.integers(0, 17, size=(30, 8, 8)).astype(np.float64)  # sklearn's 0..16 levels
    labels = np.arange(30) % 3
    assert digits.write_folder(scans, labels, tmp_path / "d") == 30
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["0", "1", "2"]
    train = load_image_folder(tmp_path / "d", "train")
    test = load_image_folder(tmp_path / "d", "test")
    assert len(train) + len(test) == 30 and train.channels == 1 and train.resolution == 8
    # Every pixel comes back as its grey level scaled to 0..255.
    levels = np.unique(np.concatenate([train.images.numpy().ravel(), test.images.numpy().ravel()]))
    assert set(levels.tolist()) <= {int(np.rint(v * 255 / 16)) for v in range(17)}
    with pytest.raises(SystemExit, match="not empty"):
        digits.write_folder(scans, labels, tmp_path / "d")


def test_vit_figure_draws_every_run_beside_the_confusion_matrix(tmp_path):
    import json

    from nerfx.images import CHART_COLOURS
    from nerfx.trainers.vit import confusion_picture

    figure = _tool("vit_figure")
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "accuracy.csv").write_text("step,train_seconds,test_accuracy,test_images\n"
                                          "500,20.0,0.4,512\n1000,41.5,0.7,512\n")
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.9,
                                                      "classes": ["a", "b"]}))
        from nerfx.images import write_png
        write_png(run / "confusion.png", confusion_picture(torch.tensor([[5, 1], [0, 6]])))
        runs.append(run)
    picture = figure.figure(runs)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    for colour in CHART_COLOURS[:2]:                    # one line per run
        assert (picture == np.array(colour, np.uint8)).all(-1).sum() > 20
    assert (picture[:, -100:] < 100).all(-1).any()      # the matrix's dark diagonal
    (runs[1] / "accuracy.csv").unlink()
    with pytest.raises(SystemExit, match="no accuracy.csv"):
        figure.figure(runs)
