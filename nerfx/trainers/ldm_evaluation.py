"""Latent diffusion's guidance evaluation: per guidance scale, the Fréchet distance of
class-balanced samples to the test images and how often nerfx's classifier names the class they
were drawn for (nerfx.fid.score_samples, as `python -m nerfx.eval_fid` scores DDPM's samples).
The ldm trainer writes the result to metrics.json as "guidance_eval".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from nerfx import fid
from nerfx.data.image_datasets import ImageDataset
from nerfx.models.autoencoder import KLAutoencoder
from nerfx.runs import read_run_config


def guidance_evaluation(run: Path, sample: Callable[..., torch.Tensor],
                        autoencoder: KLAutoencoder, train_set: ImageDataset,
                        test_set: ImageDataset, scales: Sequence[float], n: int, seed: int,
                        device: torch.device) -> dict:
    """n test images are the reference; per scale g, n samples sample(labels, g, seed=...) with
    labels 0, 1, .., classes-1, 0, 1, .. ("guidance {g}": Fréchet distance, class accuracy and
    "per_class", the class accuracy of each class in train_set.classes' order). Beside them:
    chance (1/classes), the classifier's accuracy on the test images and on their
    reconstructions by the autoencoder (in all and per class), and the floor (n training
    images against the reference). The classifier is nerfx.fid's, trained on the run's
    dataset (cached)."""
    config = read_run_config(run)
    net = fid.feature_net_for(config["data"], train_set.resolution, fid.default_cache(),
                              config["seed"], device)    # trained (with gradients) once
    classes = len(train_set.classes)
    with torch.no_grad():
        chosen = fid.spread_indices(len(test_set), n)
        test, test_labels = test_set.as_float(index=chosen), test_set.labels[chosen]
        reference = fid.statistics(net, test)
        labels = torch.arange(n) % classes
        train = train_set.as_float(index=fid.spread_indices(len(train_set), n))
        reconstructions = torch.cat([autoencoder.reconstruct(c.to(device))
                                     for c in test.split(256)])
        out: dict = {"n": n, "chance": round(1 / classes, 4),
                     "test_accuracy": fid.class_accuracy(net, test, test_labels),
                     "test_per_class": fid.per_class_accuracy(net, test, test_labels, classes),
                     "reconstruction_accuracy": fid.class_accuracy(net, reconstructions,
                                                                   test_labels),
                     "reconstruction_per_class": fid.per_class_accuracy(
                         net, reconstructions, test_labels, classes),
                     "floor": fid.score_samples(net, train, reference)["frechet"]}
        for g in scales:
            images = torch.cat([sample(labels[i:i + 256], g, seed=seed + 10 + i)
                                for i in range(0, n, 256)])
            out[f"guidance {g:g}"] = {**fid.score_samples(net, images, reference, labels),
                                      "per_class": fid.per_class_accuracy(net, images, labels,
                                                                          classes)}
    return out
