"""Run folders that earlier nerfx wrote (format 1) still load, render and resume: every
conversion lives in nerfx.run_format, and these tests build such folders from a current run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nerfx import train
from nerfx.models.pipelines import build_pipeline, load_pipeline
from nerfx.render import __main__ as render_cli
from nerfx.render.occupancy import MIN_OPTICAL_THICKNESS
from nerfx.run_format import FORMAT_VERSION, upgrade_checkpoint, upgrade_config
from nerfx.runs import RunError, read_run_config, write_json

TINY = ["--scene", "lego", "--fast", "--downscale", "100", "--eval-views", "1",
        "--video-frames", "0", "--batch-rays", "64", "--device", "cpu"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFX_DATA", str(tmp_path / "data"))


def as_format_1(config: dict) -> dict:
    """A current radiance-field config.json as nerfx wrote it before format_version: the
    command line, its merged recipe, the pipeline's arguments under "model" (with the backend
    that was then a model setting)."""
    settings = dict(config["settings"])
    for key in ("preset", "test_every", "save_every"):
        settings.pop(key)
    return {"args": {"scene": config["data"], "data": None, "model": config["model"],
                     "fast": True, "seed": config["seed"], "device": "cpu",
                     "test_every": config["settings"]["test_every"], "backend": "cuda"},
            "recipe": settings, "model": {**config["pipeline"], "backend": "cuda"},
            "camera": config["camera"], "turntable": config["turntable"],
            "scene": config["scene"], "load_downscale": config["load_downscale"],
            "builtin_scene": config["builtin_scene"]}


@pytest.mark.slow
def test_an_instant_ngp_run_of_format_1_renders_and_resumes(tmp_path, data):
    """The oldest layout: the trainer's entries at the top level of the checkpoint, "elapsed"
    seconds, no EMA, torch's Adam with one group, a grid of raw densities, a backend in the
    model's settings."""
    run = tmp_path / "old"
    train.main(TINY + ["--steps", "3", "--out", str(run)])
    config = json.loads((run / "config.json").read_text())
    new = torch.load(run / "checkpoint.pt", weights_only=True)
    pipeline = build_pipeline(config["pipeline"])
    pipeline.load_state_dict(new["task"]["pipeline"])
    adam = torch.optim.Adam(pipeline.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for p in pipeline.parameters():
        p.grad = torch.randn_like(p)
    adam.step()
    sigma = new["task"]["pipeline"]["grid.optical_thickness"] / pipeline.step_size
    state = {k: v for k, v in new["task"]["pipeline"].items()
             if k not in ("grid.optical_thickness", "grid.step_size")}
    state["grid.density"] = sigma                       # 1 / world unit, as then stored
    old = {"step": 3, "elapsed": new["seconds"], "pipeline": state,
           "optimizer": adam.state_dict(), "scaler": new["task"]["scaler"],
           "rng": new["task"]["rng"], "batch_rays": 64, "clock_psnr": "{}"}
    torch.save(old, run / "checkpoint.pt")
    write_json(run / "config.json", as_format_1(config))

    loaded, upgraded = load_pipeline(run)
    assert upgraded["format_version"] == FORMAT_VERSION and upgraded["model"] == "ngp"
    assert "backend" not in json.dumps(upgraded)
    torch.testing.assert_close(loaded.grid.optical_thickness, sigma * loaded.step_size)
    centres = loaded.grid.cell_points(torch.arange(loaded.grid.optical_thickness.numel()),
                                      jitter=False)
    assert torch.equal(loaded.grid.occupied_at(centres) & loaded.grid.visible,
                       (sigma * loaded.step_size > min(MIN_OPTICAL_THICKNESS,
                                                       float((sigma * loaded.step_size).mean())))
                       & loaded.grid.visible)
    assert render_cli.main([str(run), "--views", "0"])[0].is_file()
    resumed = train.main(["--resume", str(run), "--steps", "5"])
    assert resumed["steps"] == 5
    again = torch.load(run / "checkpoint.pt", weights_only=True)
    assert again["format_version"] == FORMAT_VERSION and again["task"]["ema"]
    assert len(again["task"]["optimizer"]["param_groups"]) == 3


@pytest.mark.slow
def test_a_checkpoint_of_the_shared_loop_without_format_version_resumes(tmp_path, data):
    """Between the two: the loop's layout, but no format_version and no per-step sample
    counts."""
    run = tmp_path / "run"
    train.main(TINY + ["--model", "nerf", "--steps", "2", "--out", str(run)])
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    del payload["format_version"], payload["task"]["samples_per_ray"]
    del payload["task"]["marched_per_ray"]
    torch.save(payload, run / "checkpoint.pt")
    assert train.main(["--resume", str(run), "--steps", "3"])["steps"] == 3


def test_image_model_configs_of_format_1_lose_their_backend_keys():
    old = {"model": "ldm", "data": "shapes", "seed": 0,
           "settings": {"ae": {"ch": 8, "attn_backend": "torch"}, "backend": "cpu", "lr": 1.0}}
    new = upgrade_config(old)
    assert new == {"format_version": FORMAT_VERSION, "model": "ldm", "data": "shapes",
                   "seed": 0, "settings": {"ae": {"ch": 8}, "lr": 1.0}}
    assert upgrade_config(new) is new                 # the current format passes as it is


def test_ema_states_written_before_debiasing_load_without_it():
    task = {"ema": {"decay": 0.9, "warmup": True, "num_updates": 3, "model": {}}}
    out = upgrade_checkpoint({"step": 1, "seconds": 1.0, "task": task, "rng": None},
                             {"model": "ddpm"})
    assert out["task"]["ema"]["debias"] is False


def test_a_newer_format_is_refused_with_its_file_named(tmp_path):
    write_json(tmp_path / "config.json", {"format_version": FORMAT_VERSION + 1, "model": "ngp"})
    with pytest.raises(RunError, match=r"config.json: .*format_version 3.*newer nerfx"):
        read_run_config(tmp_path)


def test_format_1_radiance_configs_map_every_entry():
    old = {"args": {"scene": "lego", "data": "/scenes/fox", "model": "ngp", "fast": False,
                    "seed": 3, "device": "cuda:0", "test_every": 4},
           "recipe": {"steps": 10, "batch_rays": 8}, "model": {"name": "ngp", "aabb": [0] * 6},
           "camera": {"width": 2}, "turntable": {"radius": math.pi}, "scene": "/scenes/fox"}
    new = upgrade_config(old)
    assert new["model"] == "ngp" and new["data"] == "/scenes/fox" and new["seed"] == 3
    assert new["settings"] == {"steps": 10, "batch_rays": 8, "test_every": 4,
                               "save_every": 250, "preset": "gpu"}
    assert new["pipeline"] == {"name": "ngp", "aabb": [0] * 6, "loss": "l2"}
    assert new["load_downscale"] == 1 and new["builtin_scene"] is False
    with pytest.raises(ValueError, match="no 'camera' entry"):
        upgrade_config({k: v for k, v in old.items() if k != "camera"})
