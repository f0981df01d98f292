"""The image models' trainer end to end at toy sizes: run folder, pictures, resume, errors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from nerfx import train, trainers
from nerfx.ops._dispatch import REGISTRY
from nerfx.runs import RunError, read_run_config

TOY = {
    "ddpm": dict(unet="tiny", image_size=16, batch_size=4, lr=1e-3, warmup_steps=2,
                 grad_clip=1.0, ema_decay=0.9, steps=4, save_every=2, snapshot_every=2,
                 sample_steps=2, final_samples=4, train_images=16, test_images=8),
    "vae": dict(channels=(8, 16), latent_dim=4, image_size=16, batch_size=4, lr=1e-3, steps=4,
                beta=1.0, save_every=2, snapshot_every=2, train_images=16, test_images=8),
    "vit": dict(size="Ti", patch_size=8, image_size=16, batch_size=4, lr=1e-3,
                weight_decay=0.05, warmup_steps=2, steps=4, label_smoothing=0.1, drop_path=0.1,
                save_every=2, snapshot_every=2, curve_images=4, fresh_images=True,
                crop_scale=(0.6, 1.0), flips=True, test_images=8, ema=0.9, prefetch=2),
    "ldm": dict(image_size=16, batch_size=4, ae_batch_size=4,
                ae=dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=3, num_groups=4),
                ae_steps=2, ae_lr=1e-3,
                unet=dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4, 2),
                          dropout=0.0, num_groups=4),
                context_dim=16, head_channels=8, transformer_depth=1, p_uncond=0.2, lr=1e-3,
                warmup_steps=2, grad_clip=1.0, ema_decay=0.9, steps=4, save_every=2,
                snapshot_every=2, sample_steps=2, guidance=3.0, guidance_eval=(1.0, 3.0),
                fid_samples=0, final_per_class=2, scale_images=16, train_images=16,
                test_images=8),
}
# A 16x16 sample in a grid: enlarged x3 by save_grid (min_side 48), plus 2 pixels of padding.
CELL = 16 * 3 + 2
PICTURE = {"ddpm": "samples.png", "vae": "samples.png", "vit": "confusion.png",
           "ldm": "samples.png"}


@pytest.fixture
def toy_presets(monkeypatch):
    for name, settings in TOY.items():
        monkeypatch.setitem(trainers.trainer_modules()[name].PRESETS, "cpu-fast", settings)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(TOY))
def test_trains_writes_the_run_folder_and_resumes(tmp_path, toy_presets, model):
    run = tmp_path / model
    metrics = train.main(["--model", model, "--data", "shapes", "--fast", "--device", "cpu",
                          "--out", str(run)])          # through the CLI entry point
    assert metrics["steps"] == 4
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == model and config["settings"]["preset"] == "cpu-fast"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
    assert (run / PICTURE[model]).stat().st_size > 0
    assert metrics["backends"] == ({} if model == "vae" else {"attention": "sdpa"})
    if model == "vit":
        saved = json.loads((run / "metrics.json").read_text())
        assert sum(map(sum, saved["confusion"])) == 8 == saved["test_images"]
        assert set(saved["per_class_accuracy"]) == set(saved["classes"])
        curve = (run / "accuracy.csv").read_text().splitlines()     # every snapshot_every steps
        assert curve[0] == "step,train_seconds,test_accuracy,test_images"
        assert [line.split(",")[0] for line in curve[1:]] == ["2", "4"]
        assert all(line.endswith(",4") for line in curve[1:])
        assert (run / "accuracy.png").stat().st_size > 0                # the curve, drawn
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    resumed = train.main(["--resume", str(run), "--steps", "6"])
    assert resumed["steps"] == 6


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path, toy_presets):
    """4 steps straight and 2 + 2 with a resume reach the same weights (data order, noise and
    optimiser state all restored)."""
    common = ["--model", "vae", "--data", "shapes", "--fast", "--device", "cpu", "--threads", "1"]
    train.main(common + ["--out", str(tmp_path / "straight")])
    train.main(common + ["--steps", "2", "--out", str(tmp_path / "split")])
    train.main(["--resume", str(tmp_path / "split"), "--steps", "4", "--threads", "1"])
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["task"]["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["task"]["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, msg=key)


def test_bad_input_ends_with_a_message(tmp_path, toy_presets):
    with pytest.raises(SystemExit, match="nerfx.train: .*unknown dataset"):
        train.main(["--model", "vae", "--data", "imagenet", "--fast", "--out", str(tmp_path)])
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match="malformed JSON"):
        train.main(["--resume", str(tmp_path)])
    with pytest.raises(RunError, match="not a nerfx run folder"):
        read_run_config(tmp_path / "missing")


@pytest.mark.slow
def test_the_backend_is_a_setting_of_the_command(tmp_path, toy_presets, monkeypatch):
    """--backend applies to training and sampling and metrics.json records it; config.json does
    not hold it, so a resumed run takes the new command's (else NERFX_BACKEND's)."""
    from nerfx import sample

    op = importlib.import_module("nerfx.ops.attention")  # the module: nerfx.ops.attention is the op
    calls = []
    reference = op.reference_attention
    monkeypatch.setattr(op, "reference_attention",
                        lambda *args, **kwargs: calls.append(1) or reference(*args, **kwargs))
    run = tmp_path / "ddpm"
    metrics = train.main(["--model", "ddpm", "--data", "shapes", "--fast", "--device", "cpu",
                          "--backend", "torch", "--out", str(run)])
    assert metrics["backends"] == {"attention": "torch"} and calls
    assert "backend" not in (run / "config.json").read_text()
    calls.clear()
    sample.main([str(run), "--steps", "2", "--n", "2", "--device", "cpu", "--backend", "torch"])
    assert calls
    monkeypatch.setenv("NERFX_BACKEND", "torch")
    assert train.main(["--resume", str(run), "--steps", "5"])["backends"] == {"attention": "torch"}
    resumed = train.main(["--resume", str(run), "--steps", "6", "--backend", "sdpa"])
    assert resumed["backends"] == {"attention": "sdpa"}
    with pytest.raises(SystemExit):
        train.main(["--resume", str(run), "--backend", "flash"])


def test_every_trainer_module_is_found():
    assert {"ddpm", "vae"} <= set(trainers.models())
    for module in trainers.trainer_modules().values():
        assert set(trainers.PRESET_NAMES) == set(module.PRESETS)
        assert set(module.OPS) <= set(REGISTRY)     # ops whose backends metrics.json records


@pytest.mark.slow
def test_sample_cli_draws_from_ddpm_and_vae_runs(tmp_path, toy_presets):
    from PIL import Image

    from nerfx import sample

    for model in ("ddpm", "vae"):
        train.main(["--model", model, "--data", "shapes", "--fast", "--device", "cpu",
                    "--out", str(tmp_path / model)])
    a = sample.main([str(tmp_path / "ddpm"), "--steps", "3", "--n", "4", "--seed", "1",
                     "--device", "cpu"])
    b = sample.main([str(tmp_path / "ddpm"), "--steps", "3", "--n", "4", "--seed", "1",
                     "--device", "cpu", "--out", str(tmp_path / "again.png")])
    with Image.open(a) as first, Image.open(b) as second:      # seeds make sampling repeatable
        assert first.size == (2 + 4 * CELL, 2 + CELL) and first.tobytes() == second.tobytes()
    strip = sample.main([str(tmp_path / "ddpm"), "--steps", "2", "--n", "5",
                         "--interpolate", "1,2", "--device", "cpu"])
    with Image.open(strip) as img:
        assert img.size == (2 + 5 * CELL, 2 + CELL)
    out = sample.main([str(tmp_path / "vae"), "--n", "4", "--device", "cpu"])
    assert out.is_file() and out.with_name(out.stem + "_interpolation.png").is_file()
    with pytest.raises(SystemExit, match="not a nerfx run folder"):
        sample.main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="two seeds"):
        sample.main([str(tmp_path / "ddpm"), "--interpolate", "1", "--device", "cpu"])



def free_port() -> str:
    """A TCP port on 127.0.0.1 that is free now, for torchrun's rendezvous: a fixed port clashes
    when two checkouts run these tests at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one_with_the_doubled_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo), 4 images each, reaches the weights of 1 process
    with 8 images per step: each process its slice of the batch, gradients averaged; the 2
    processes nerfx starts itself (--processes 2) reach torchrun's weights exactly."""
    import os
    import subprocess
    import sys

    common = ["-m", "nerfx.train", "--model", "vit", "--data", "shapes", "--fast",
              "--device", "cpu", "--steps", "3", "--set", "depth=1", "--set", "dim=32",
              "--set", "heads=2", "--set", "drop_path=0", "--set", "train_images=64",
              "--set", "test_images=8", "--set", "warmup_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                free_port()]
    for name, launcher, options in (("two", torchrun, ["--batch-size", "4"]),
                                    ("one", [], ["--batch-size", "8", "--processes", "1"]),
                                    ("spawned", [], ["--batch-size", "4", "--processes", "2",
                                                     "--threads", "1"])):
        done = subprocess.run([sys.executable, *launcher, *common, *options,
                               "--out", str(tmp_path / name)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    spawned = torch.load(tmp_path / "spawned" / "checkpoint.pt", weights_only=True)
    assert two["step"] == one["step"] == spawned["step"] == 3
    for name in ("two", "spawned"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["processes"] == 2
    for key, value in two["task"]["model"].items():
        torch.testing.assert_close(spawned["task"]["model"][key], value, rtol=0, atol=0,
                                   msg=key)
    # Adam's first steps are about lr * sign(gradient): where a gradient is ~0, rounding in the
    # all-reduce can flip the sign, so a few entries may differ by up to lr per step (1e-3).
    diff = torch.cat([(two["task"]["model"][k] - v).abs().flatten()
                      for k, v in one["task"]["model"].items()])
    assert diff.max() <= 3 * 1e-3
    assert (diff > 1e-5).float().mean() < 0.005, f"{(diff > 1e-5).float().mean():.2%} differ"


@pytest.mark.slow
def test_resume_with_another_number_of_processes(tmp_path):
    """A run trained by 2 processes continues in 1 (the data position counts global images)."""
    import os
    import subprocess
    import sys

    common = ["-m", "nerfx.train", "--model", "vit", "--data", "shapes", "--fast",
              "--device", "cpu", "--set", "depth=1", "--set", "dim=32", "--set", "heads=2",
              "--set", "train_images=64", "--set", "test_images=8", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", free_port(), *common, "--steps", "3", "--out", str(run)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["task"]["batches"]["position"] == 3 * 8          # 3 global batches of 2 x 4
    one = subprocess.run([sys.executable, "-m", "nerfx.train", "--resume", str(run),
                          "--steps", "5", "--processes", "1"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["task"]["batches"]["position"] == 3 * 8 + 2 * 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 1 and metrics["steps"] == 5
