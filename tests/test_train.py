"""End to end on the CPU at a tiny size: train, evaluate, write every output, resume, render."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfx import train
from nerfx.data.rays import TrainingRays
from nerfx.models.pipelines import load_pipeline
from nerfx.render import __main__ as render_cli
from nerfx.runs import RunError, write_json

TINY = ["--scene", "lego", "--fast", "--downscale", "100", "--eval-views", "2",
        "--video-frames", "3", "--device", "cpu"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFX_DATA", str(tmp_path / "data"))


@pytest.mark.slow
def test_train_writes_outputs_and_resumes(tmp_path, data):
    run = tmp_path / "run"
    metrics = train.main(TINY + ["--steps", "12", "--batch-rays", "256", "--out", str(run)])
    assert metrics["steps"] == 12 and metrics["builtin_scene"]
    # The built-in lego's pixels are point samples at their centres: rays stay there.
    assert json.loads((run / "config.json").read_text())["point_sampled"] is True
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test_psnr"] == metrics["test_psnr"] and saved["test_psnr"] > 5
    assert saved["backends"]["hash_encode"] == "cpu"
    trained, marched = saved["samples_per_ray_at_step"], saved["marched_per_ray_at_step"]
    assert trained.keys() == marched.keys() and all(trained[k] <= marched[k] for k in trained)
    for name in ("renders/test_000.png", "renders/depth_000.png", saved["video"]):
        assert (run / name).stat().st_size > 0
    with Image.open(run / "renders" / "test_000.png") as img:
        assert img.size == (16, 8)  # prediction beside the truth
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 12
    resumed = train.main(["--resume", str(run), "--steps", "15"])
    assert resumed["steps"] == 15
    assert resumed["train_seconds"] >= metrics["train_seconds"]


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path, data):
    """12 steps straight and 6 + 6 with a resume draw the same rays and reach the same model."""
    # One fixed thread: the same reductions in every run whatever else the machine does.
    common = TINY + ["--batch-rays", "64", "--video-frames", "0", "--threads", "1"]
    train.main(common + ["--steps", "12", "--out", str(tmp_path / "straight")])
    train.main(common + ["--steps", "6", "--out", str(tmp_path / "split")])
    train.main(["--resume", str(tmp_path / "split"), "--steps", "12", "--threads", "1"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["task"]["rng"], b["task"]["rng"])
    for key, value in a["task"]["pipeline"].items():
        torch.testing.assert_close(b["task"]["pipeline"][key], value, atol=1e-4, rtol=1e-4,
                                   msg=key)


@pytest.mark.slow
def test_nerf_model_trains_and_renders(tmp_path, data):
    run = tmp_path / "nerf"
    metrics = train.main(TINY + ["--model", "nerf", "--steps", "20", "--batch-rays", "128",
                                 "--out", str(run)])
    assert metrics["model"] == "nerf" and metrics["steps"] == 20 and metrics["test_psnr"] > 5
    pipeline, config = load_pipeline(run)
    assert config["model"] == "nerf" and config["pipeline"]["n_fine"] == 64
    written = render_cli.main([str(run), "--views", "0,1"])
    assert [p.name for p in written] == ["rgb_000.png", "rgb_001.png"]
    for name in ("depth_000.png", "vs_gt_001.png"):
        assert (run / "render" / name).is_file()
    (video,) = render_cli.main([str(run), "--video", "--frames", "2"])
    assert video.stem == "turntable" and video.stat().st_size > 0


def test_bad_run_folders_are_named(tmp_path):
    with pytest.raises(RunError, match="not a nerfx run folder"):
        load_pipeline(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(RunError, match="malformed JSON"):
        load_pipeline(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"format_version": 2, "model": "ngp", "pipeline": {"name": "ngp",
                                                           "aabb": [-1, -1, -1, 1, 1, 1]}}))
    with pytest.raises(RunError, match="no checkpoint"):
        load_pipeline(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(RunError, match="unreadable checkpoint"):
        load_pipeline(tmp_path)
    with pytest.raises(SystemExit, match="not a nerfx run folder"):
        render_cli.main([str(tmp_path / "missing")])


@pytest.mark.slow
def test_mixed_precision_and_samples_per_step(tmp_path, data):
    """--precision mixed (bf16 autocast on a CPU) trains; --batch-samples sets the ray count."""
    run = tmp_path / "mixed"
    metrics = train.main(TINY + ["--steps", "2", "--precision", "mixed", "--batch-rays", "512",
                                 "--batch-samples", "20000", "--video-frames", "0",
                                 "--out", str(run)])
    assert metrics["precision"] == "mixed" and math.isfinite(metrics["test_psnr"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # A fresh grid gives about 140 samples per ray: 20000 samples want about 128 rays.
    assert 128 <= state["task"]["batch_rays"] <= 256
    assert all(torch.isfinite(v).all() for v in state["task"]["pipeline"].values()
               if v.is_floating_point())


def test_bad_folders_end_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="no such scene folder"):
        train.main(["--data", str(tmp_path / "missing"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="not a nerfx run folder"):
        train.main(["--resume", str(tmp_path)])


def test_training_rays_on_random_or_white_backgrounds():
    from nerfx.cameras import look_at
    from nerfx.data.scenes import Scene

    images = torch.zeros(2, 4, 5, 4, dtype=torch.uint8)  # fully transparent pixels
    poses = torch.tensor(np.stack([look_at(np.array([4.0, 0, 1])), look_at(np.array([0, 4.0, 1]))]),
                         dtype=torch.float32)
    scene = Scene(images, poses, torch.tensor([[5.0, 5.0, 2.5, 2.0]] * 2), ["a", "b"])
    rays = TrainingRays(scene, torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    o, d, background, target = rays.sample(64, g1)
    assert o.shape == d.shape == background.shape == target.shape == (64, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(target, background)  # transparent: the target is the background
    assert background.std() > 0.1
    _, _, white, target_white = rays.sample(64, g2, random_background=False)
    assert torch.equal(white, torch.ones(64, 3)) and torch.equal(target_white, white)
    assert torch.equal(g1.get_state(), g2.get_state())  # both draw the same random numbers


def test_run_files_are_replaced_whole(tmp_path, monkeypatch):
    """config.json and metrics.json go through a temporary file, like the checkpoint: a write
    killed part-way leaves the previous file as it was."""
    path = tmp_path / "config.json"
    write_json(path, {"a": 1})
    real_write_text = Path.write_text

    def dies_half_way(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("killed")

    monkeypatch.setattr(Path, "write_text", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        write_json(path, {"a": 2, "b": "x" * 100})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}


def test_render_refuses_a_turntable_without_frames(tmp_path, capsys):
    with pytest.raises(SystemExit):
        render_cli.parse_args([str(tmp_path), "--video", "--frames", "0"])
    assert "--frames must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_metrics_record_the_backend_that_ran(tmp_path, data):
    """--backend torch is what runs, and what metrics.json says (it used to say "cpu")."""
    run = tmp_path / "torch"
    metrics = train.main(TINY + ["--steps", "2", "--batch-rays", "64", "--video-frames", "0",
                                 "--eval-views", "1", "--backend", "torch", "--out", str(run)])
    assert metrics["backends"]["hash_encode"] == "torch"
    assert metrics["backends"]["march_rays"] == "torch"
    assert "backend" not in json.dumps(json.loads((run / "config.json").read_text()))


def test_presets_by_device_and_fast_with_the_command_line_over_them():
    """The driver takes the trainer module's preset for the device and --fast; flags override
    it, and a flag the model has no setting for is refused."""
    from nerfx import trainers

    for model in ("ngp", "nerf"):
        presets = trainers.trainer(model).PRESETS
        for device, fast in (("cpu", True), ("cpu", False), ("cuda", True), ("cuda", False)):
            config = trainers.new_config(train.request_of(train.parse_args(
                ["--model", model, "--device", device] + (["--fast"] if fast else []))))
            want = presets[trainers.preset_name(device, fast)]
            assert {k: config["settings"][k] for k in want} == want, (model, device, fast)
    cpu_fast = trainers.new_config(train.request_of(train.parse_args(["--fast"])))["settings"]
    assert (cpu_fast["steps"], cpu_fast["batch_rays"], cpu_fast["log2_hashmap_size"]) == \
        (2000, 1024, 17)
    assert cpu_fast["preset"] == "cpu-fast"
    nerf = trainers.new_config(train.request_of(train.parse_args(
        ["--model", "nerf", "--batch-samples", "1280", "--steps", "7"])))["settings"]
    assert nerf["steps"] == 7 and nerf["batch_samples"] == 1280
    with pytest.raises(SystemExit, match="lr: not a setting of ngp"):
        train.main(["--lr", "0.1", "--steps", "1"])


def test_clock_marks_are_measured_on_eight_spread_test_views():
    from nerfx.trainers.radiance import CLOCK_VIEWS, clock_views

    assert CLOCK_VIEWS == 8
    assert clock_views(list(range(0, 200))) == list(range(0, 200, 25))
    assert clock_views([0, 5, 10]) == [0, 5, 10]


def test_runs_are_named_after_their_data(tmp_path, monkeypatch):
    """The run folder, metrics.json and the final line name the scene trained on, not lego."""
    from nerfx.runs import data_name
    from nerfx.trainers import run_folder_name

    capture = tmp_path / "fox"
    (capture / "sparse" / "0").mkdir(parents=True)
    (capture / "transforms.json").write_text("{}")
    monkeypatch.chdir(capture)
    for data in (".", "./", f"{capture}/", str(capture), "transforms.json", "sparse/0"):
        assert data_name(data) == "fox", data
    assert data_name("room") == "room" and data_name("mnist:/x/y") == "mnist"
    assert run_folder_name({"data": str(capture), "model": "ngp"}).startswith("fox-ngp-")


@pytest.mark.slow
def test_the_built_in_room_trains_with_three_cascades(tmp_path, data):
    run = tmp_path / "room"
    metrics = train.main(["--scene", "room", "--fast", "--downscale", "40", "--steps", "3",
                          "--eval-views", "2", "--video-frames", "0", "--device", "cpu",
                          "--out", str(run)])
    assert metrics["scene"] == "room" and metrics["builtin_scene"] and metrics["steps"] == 3
    config = json.loads((run / "config.json").read_text())
    # The CPU recipe's step is 4x the paper's (step_divisor 256): its cone angle too, 4 / 256.
    assert config["pipeline"]["cascades"] == 3 and config["pipeline"]["cone_angle"] == 1 / 64
    assert Path(config["scene"]).name == "room-24x18" and math.isfinite(metrics["test_psnr"])
    assert config["point_sampled"] is False  # supersampled images: training rays jittered


@pytest.mark.slow
def test_the_cpu_preset_reads_large_photos_smaller(tmp_path, capsys, monkeypatch):
    from nerfx.trainers import ngp
    from nerfx.trainers.radiance import fitted_downscale
    from tests.data.test_scenes import instant_ngp

    capture = instant_ngp(tmp_path / "capture")          # 8 x 6 photos
    assert fitted_downscale(capture, 1, None) == 1
    assert fitted_downscale(capture, 1, 8) == 1 and capsys.readouterr().out == ""
    assert fitted_downscale(capture, 1, 3) == 4             # 8 -> 4 -> 2
    assert "read at 1/4 (2x1)" in capsys.readouterr().out
    assert fitted_downscale(capture, 2, 3) == 4             # doubled from the preset's
    # The command line: the CPU preset fits the photos, --downscale keeps what it asks for.
    monkeypatch.setitem(ngp.PRESETS["cpu-fast"], "max_image_side", 4)
    runs = {}
    for flags in ([], ["--downscale", "1"]):
        run = tmp_path / f"run{len(flags)}"
        train.main(["--data", str(capture), "--fast", "--steps", "1", "--eval-views", "1",
                    "--video-frames", "0", "--device", "cpu", "--out", str(run), *flags])
        runs[len(flags)] = json.loads((run / "config.json").read_text())
    assert runs[0]["load_downscale"] == runs[0]["settings"]["downscale"] == 8
    assert runs[0]["camera"]["width"] == 1
    assert runs[2]["load_downscale"] == 1 and runs[2]["camera"]["width"] == 8


def test_a_colmap_model_trains_and_records_its_aabb_scale(tmp_path, data):
    from nerfx.data import room
    from tests.data.colmap_writer import room_as_colmap

    capture = room_as_colmap(room.generate(24, root=tmp_path / "builtin", progress=False),
                             tmp_path / "fox", binary=True)
    run = tmp_path / "run"
    metrics = train.main(["--data", str(capture), "--fast", "--downscale", "1", "--steps", "3",
                          "--eval-views", "2", "--video-frames", "0", "--device", "cpu",
                          "--out", str(run)])
    assert metrics["scene"] == "fox" and not metrics["builtin_scene"] and metrics["steps"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["aabb_scale"] == 8 and config["pipeline"]["cascades"] == 4
    assert set(config["source_transform"]) == {"rotation", "center", "scale"}
    assert math.isfinite(metrics["test_psnr"])
