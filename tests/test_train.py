"""End to end on the CPU at a tiny size: train, evaluate, write every output, resume."""

from __future__ import annotations

import json

import torch
from PIL import Image

from nerfx import train


def test_train_writes_outputs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFX_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    args = ["--scene", "lego", "--fast", "--downscale", "100", "--steps", "12",
            "--batch-rays", "256", "--eval-views", "2", "--out", str(run), "--device", "cpu"]
    metrics = train.main(args)
    assert metrics["steps"] == 12 and metrics["builtin_scene"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test_psnr"] == metrics["test_psnr"] and saved["test_psnr"] > 5
    assert saved["backends"]["hash_encode"] == "cpu"
    for name in ("test_000.png", "depth_000.png"):
        with Image.open(run / "renders" / name) as img:
            assert img.size[0] > 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 12
    resumed = train.main(["--resume", str(run), "--steps", "15"])
    assert resumed["steps"] == 15
    assert resumed["train_seconds"] >= metrics["train_seconds"]
