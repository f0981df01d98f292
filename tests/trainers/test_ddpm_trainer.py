"""The DDPM trainer's settings: the U-Net a preset names, the --fast preset."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.data.shapes import load_shapes
from nerfx.trainers import ddpm


def test_unet_setting_is_a_preset_name_or_config_fields():
    tiny = ddpm.build_unet({"unet": "tiny"}, 3, 16)
    assert (tiny.config.ch, tiny.config.ch_mult, tiny.config.resolution) == (32, (1, 2), 16)
    # Fields as config.json gives them back (lists), for a resumed or evaluated run.
    fields = {"ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [4],
              "dropout": 0.0, "num_groups": 4}
    net = ddpm.build_unet({"unet": fields}, 1, 16)
    assert net.config.ch_mult == (1, 2, 2) and net.config.attn_resolutions == (4,)
    assert (net.config.in_channels, net.config.out_channels, net.config.resolution) == (1, 1, 16)
    assert net(torch.zeros(2, 1, 16, 16), torch.tensor([0, 999])).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="unet must be"):
        ddpm.build_unet({"unet": "huge"}, 3, 16)


def _trainer(**overrides) -> ddpm.Trainer:
    settings = {**ddpm.PRESETS["cpu-fast"], "batch_size": 4, **overrides}
    data = load_shapes("train", size=settings["image_size"], n=8)
    return ddpm.Trainer(settings, data, data, torch.device("cpu"), seed=0)


def test_fast_preset_trains_and_samples_at_its_size():
    trainer = _trainer()
    fast = ddpm.PRESETS["cpu-fast"]
    assert trainer.diffusion.config.schedule == fast.get("schedule", "linear")
    assert trainer.diffusion.config.objective == fast.get("objective", "eps")
    loss = trainer.train_step(0)["loss"]
    assert math.isfinite(loss)
    images = trainer.sample(2, steps=2)
    assert images.shape == (2, 3, fast["image_size"], fast["image_size"])
    assert images.abs().max() <= 1.0
