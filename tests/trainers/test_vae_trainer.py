"""The VAE trainer's settings reach the model, for training and for a run loaded back."""

from __future__ import annotations

import torch

from nerfx.trainers import vae


def test_likelihood_settings_reach_the_model():
    settings = {**vae.PRESETS["cpu-fast"], "likelihood": "gaussian", "gaussian_std": 0.2}
    config = vae.vae_config(settings, 3, 16)
    assert (config.likelihood, config.gaussian_std, config.latent_dim) == ("gaussian", 0.2, 16)
    # A run written before the setting existed is the Bernoulli VAE it trained.
    old = vae.vae_config(vae.PRESETS["cpu-fast"], 1, 16)
    assert (old.likelihood, old.gaussian_std, old.in_channels) == ("bernoulli", None, 1)
    state = {"model": vae.VAE(config).state_dict()}
    model = vae.load_trained({"settings": settings, "image_shape": [3, 16, 16]}, state, "cpu")
    out = model.loss(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(out.loss) and model.config.gaussian_std == 0.2
