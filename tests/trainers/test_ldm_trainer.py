"""The latent diffusion trainer at toy sizes: exact resume in either phase and at the boundary,
the autoencoder taken from an earlier run, the guidance evaluation (Fréchet distance, class
accuracy by nerfx's classifier), and python -m nerfx.sample on an ldm run."""

from __future__ import annotations

import json

import pytest
import torch

from nerfx import fid, sample, train, trainers
from tests.trainers.test_image_trainers import CELL
from tests.trainers.test_image_trainers import TOY as SHARED_TOY

# The shared toy preset, a little longer (3 autoencoder steps of 6), without mid-run pictures.
TOY = SHARED_TOY["ldm"] | dict(ae_steps=3, steps=6, save_every=100, snapshot_every=0)
COMMON = ["--model", "ldm", "--data", "shapes", "--fast", "--device", "cpu"]


@pytest.fixture
def toy(monkeypatch):
    """Sets the ldm fast preset to TOY plus overrides; returns the setter."""
    def set_preset(**overrides):
        monkeypatch.setitem(trainers.trainer_modules()["ldm"].PRESETS, "cpu-fast",
                            {**TOY, **overrides})
    set_preset()
    return set_preset


def task_state(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["task"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 3, 4])      # in the autoencoder phase, at the switch, after
def test_resume_in_either_phase_matches_a_straight_run(tmp_path, toy, stop):
    one = ["--threads", "1"]     # the same reductions in every run, whatever the machine does
    train.main(COMMON + one + ["--out", str(tmp_path / "straight")])
    train.main(COMMON + one + ["--steps", str(stop), "--out", str(tmp_path / "split")])
    train.main(["--resume", str(tmp_path / "split"), "--steps", "6", *one])
    a, b = task_state(tmp_path / "straight"), task_state(tmp_path / "split")
    assert a["scale_measured"] and b["scale_measured"]
    for part in ("model", ):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, msg=key)
    for key, value in a["ema"]["model"].items():
        torch.testing.assert_close(b["ema"]["model"][key], value, msg=key)
    assert a["latent_batches"] == b["latent_batches"]


@pytest.mark.slow
def test_phases_share_one_step_counter(tmp_path, toy):
    metrics = train.main(COMMON + ["--out", str(tmp_path / "run")])
    state = task_state(tmp_path / "run")
    assert metrics["steps"] == 6
    assert state["batches"]["position"] == 3 * 4            # 3 autoencoder steps of 4 images
    assert state["latent_batches"]["position"] == 3 * 4     # 3 latent steps of 4
    assert state["ema"]["num_updates"] == 3
    assert metrics["scale_factor"] > 0 and metrics["latent_shape"] == [3, 4, 4]


@pytest.mark.slow
def test_autoencoder_from_an_earlier_run(tmp_path, toy):
    ae_only = train.main(COMMON + ["--steps", "3", "--out", str(tmp_path / "ae")])
    assert not (tmp_path / "ae" / "samples.png").exists() and "scale_factor" not in ae_only
    first = task_state(tmp_path / "ae")["model"]
    # a preset whose own autoencoder differs: the earlier run's architecture and weights win
    toy(autoencoder_run=str(tmp_path / "ae"), ae=dict(TOY["ae"], ch=4), steps=3)
    metrics = train.main(COMMON + ["--out", str(tmp_path / "latent")])
    config = json.loads((tmp_path / "latent" / "config.json").read_text())
    assert config["settings"]["ae_steps"] == 0 and config["settings"]["ae"]["ch"] == 8
    assert metrics["steps"] == 3 and (tmp_path / "latent" / "samples.png").is_file()
    second = task_state(tmp_path / "latent")
    assert second["ema"]["num_updates"] == 3                 # all three steps were latent steps
    for key, value in first.items():
        if key.startswith("autoencoder."):
            torch.testing.assert_close(second["model"][key], value, msg=key)  # frozen
    toy(autoencoder_run=str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="cannot read the autoencoder run"):
        train.main(COMMON + ["--out", str(tmp_path / "bad")])


@pytest.mark.slow
def test_runs_saved_with_an_attention_backend_setting_still_load(tmp_path, toy):
    """Older nerfx saved "attn_backend" in the model settings of config.json; it is a run
    setting now (--backend), and the key is ignored: the model builds, resumes and samples."""
    old = dict(TOY, ae=dict(TOY["ae"], attn_backend="torch"),
               unet=dict(TOY["unet"], attn_backend="triton"))
    run = tmp_path / "run"
    train.main(COMMON + ["--steps", "4", "--out", str(run)])
    config = json.loads((run / "config.json").read_text())
    config["settings"].update(ae=old["ae"], unet=old["unet"])
    del config["format_version"]            # as nerfx wrote it then
    (run / "config.json").write_text(json.dumps(config))
    assert train.main(["--resume", str(run), "--steps", "5"])["steps"] == 5
    assert sample.main([str(run), "--steps", "2", "--class", "1", "--n", "2",
                        "--device", "cpu"]).is_file()


@pytest.mark.slow
def test_guidance_evaluation(tmp_path, toy, monkeypatch):
    """finish() reports, per guidance scale, the Fréchet distance and the class accuracy of
    samples by nerfx's classifier (a quickly trained one here)."""
    monkeypatch.setenv("NERFX_CACHE", str(tmp_path / "cache"))
    quick = fid.train_feature_net
    monkeypatch.setattr(fid, "train_feature_net",
                        lambda data, **kw: quick(data, **{**kw, "steps": 3, "batch_size": 8}))
    toy(fid_samples=8)
    metrics = train.main(COMMON + ["--out", str(tmp_path / "run")])
    table = metrics["guidance_eval"]
    assert table["n"] == 8 and table["chance"] == 0.125
    for key in ("guidance 1", "guidance 3"):
        assert table[key]["frechet"] >= 0 and 0 <= table[key]["class_accuracy"] <= 1
        assert len(table[key]["per_class"]) == 8           # 8 samples: one per class
        assert all(a in (0.0, 1.0) for a in table[key]["per_class"])
    assert len(table["test_per_class"]) == len(table["reconstruction_per_class"]) == 8
    assert 0 <= table["test_accuracy"] <= 1 and table["floor"] >= 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["guidance_eval"] == table


def test_latent_learning_rate_and_diffusion_settings():
    """The latent phase's lr: a linear warm-up, then constant or (lr_decay "cosine") a cosine to
    0 at the run's last step; settings["diffusion"] reaches the model's DiffusionConfig."""
    from nerfx.trainers import ldm, ldm_latent

    settings = dict(TOY, steps=110, ae_steps=10, warmup_steps=10, lr=1e-3)
    phase = ldm_latent.LatentPhase.__new__(ldm_latent.LatentPhase)
    phase.settings = settings
    assert phase.learning_rate(0) == pytest.approx(1e-4)
    assert phase.learning_rate(9) == phase.learning_rate(99) == pytest.approx(1e-3)
    settings["lr_decay"] = "cosine"                  # 100 latent steps, 10 of warm-up
    assert phase.learning_rate(9) == pytest.approx(1e-3)
    assert phase.learning_rate(55) == pytest.approx(0.5e-3)
    assert phase.learning_rate(99) < 1e-6
    from nerfx.trainers.ldm_autoencoder import AutoencoderPhase

    ae_phase = AutoencoderPhase.__new__(AutoencoderPhase)
    ae_phase.settings = dict(settings, ae_lr=2e-3)
    assert ae_phase.learning_rate(0) == ae_phase.learning_rate(9) == 2e-3   # constant
    ae_phase.settings["ae_lr_decay"] = "cosine"                              # over ae_steps 10
    assert ae_phase.learning_rate(0) == pytest.approx(2e-3)
    assert ae_phase.learning_rate(5) == pytest.approx(1e-3)
    model = ldm.build_model(dict(TOY, diffusion=dict(schedule="scaled_linear", beta_start=0.001,
                                                     beta_end=0.01, min_snr_gamma=5.0)),
                            3, 16, 8)
    config = model.config.diffusion
    assert (config.schedule, config.min_snr_gamma, config.clip_denoised) == \
        ("scaled_linear", 5.0, False)
    assert model.diffusion.betas[-1].item() == pytest.approx(0.01)
    assert ldm.build_model(dict(TOY), 3, 16, 8).config.diffusion.schedule == "linear"


@pytest.mark.slow
def test_sample_cli_on_an_ldm_run(tmp_path, toy):
    from PIL import Image

    run = tmp_path / "run"
    train.main(COMMON + ["--out", str(run)])
    args = [str(run), "--steps", "2", "--device", "cpu"]
    one = sample.main(args + ["--guidance", "3", "--class", "2", "--n", "3"])
    again = sample.main(args + ["--guidance", "3", "--class", "triangle", "--n", "3",
                                "--out", str(tmp_path / "again.png")])    # class 2 by name
    with Image.open(one) as a, Image.open(again) as b:
        assert a.size == (2 + 3 * CELL, 2 + CELL) and a.tobytes() == b.tobytes()
    assert "class2_guidance3" in one.name
    grid = sample.main(args + ["--per-class", "2"])                        # every class
    with Image.open(grid) as img:
        assert img.size == (2 + 2 * CELL, 2 + 8 * CELL)  # a row per class
    assert "guidance3" in grid.name                                        # the run's default
    with pytest.raises(SystemExit, match="classes are 0..7"):
        sample.main(args + ["--class", "8"])
    with pytest.raises(SystemExit, match="--interpolate is not for it"):
        sample.main(args + ["--interpolate", "1,2"])


@pytest.mark.slow
def test_adversarial_option_trains_and_resumes(tmp_path, toy):
    """adversarial_start=1: from autoencoder step 1 on, the generator term and the
    discriminator's hinge step; the discriminator and its optimiser resume exactly."""
    toy(adversarial_start=1, disc_ndf=8, disc_layers=2)
    one = ["--threads", "1"]     # the same reductions in every run, whatever the machine does
    train.main(COMMON + one + ["--out", str(tmp_path / "straight")])
    train.main(COMMON + one + ["--steps", "2", "--out", str(tmp_path / "split")])
    train.main(["--resume", str(tmp_path / "split"), "--steps", "6", *one])
    a, b = task_state(tmp_path / "straight"), task_state(tmp_path / "split")
    assert a["disc_optimizer"]["state"]                      # it took steps
    for part in ("discriminator", "model"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, msg=key)
