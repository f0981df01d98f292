"""A Fréchet distance between image sets, on the features of a classifier nerfx trains itself.

FID (Heusel et al., 2017) compares the Gaussians fitted to Inception-v3 features of real and
generated images: d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½). Inception's weights cannot be
downloaded here, so nerfx fits a small convolutional classifier to the dataset's own labels and
uses its penultimate features. The numbers are comparable between nerfx runs on the same dataset
and image size (the same classifier, cached per dataset), not with published FIDs.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.data.augment import Augmentation, augmentation_for
from nerfx.data.image_datasets import ImageDataset
from nerfx.data.image_specs import load_image_dataset
from nerfx.runs import load_checkpoint, save_checkpoint

FEATURES = 128          # width of the feature layer the distance is computed on


class FeatureNet(nn.Module):
    """Three conv stages (32, 64, 128 channels) and global average pooling -> [B, 128]
    features, with a linear head for training on the dataset's classes."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (32, 64, FEATURES):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1, stride=2), nn.SiLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """images [B, C, H, W] in [-1, 1] -> [B, 128]."""
        return self.body(images).mean((-2, -1))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


JUDGE_STEPS = 3000     # training steps of the classifier (batch 64); 400 before 2026-12-02
JUDGE_VERSION = 2      # part of the cache key: a change of the judge's training retrains it


def train_feature_net(data: ImageDataset, steps: int = JUDGE_STEPS, batch_size: int = 64,
                      seed: int = 0, device: torch.device | str = "cpu",
                      augmentation: Augmentation | None = None) -> FeatureNet:
    """Fits the classifier to the labels: Adam 2e-3 with cosine decay to 0, the flips the
    dataset allows (augmentation; none when not given)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    augmentation = augmentation or Augmentation()
    net = FeatureNet(data.channels, len(data.classes)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    for _ in range(steps):
        index = torch.randint(0, len(data), (batch_size,), generator=generator)
        x = augmentation(data.as_float(index=index), generator).to(device)   # [B, C, H, W]
        loss = F.cross_entropy(net(x), data.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval().requires_grad_(False)


def feature_net_for(data: str, size: int, cache: Path, seed: int = 0,
                    device: torch.device | str = "cpu") -> FeatureNet:
    """The classifier of a dataset (as --data names it) at an image size, trained once and
    cached (atomically)."""
    key = hashlib.sha256(f"{data}|{size}|{seed}|{JUDGE_VERSION}".encode()).hexdigest()[:12]
    path = cache / f"featurenet-{key}.pt"
    train_set = load_image_dataset(data, "train", size=size, seed=seed)
    net = FeatureNet(train_set.channels, len(train_set.classes))
    if path.is_file():
        net.load_state_dict(load_checkpoint(path)["model"])
        return net.to(device).eval().requires_grad_(False)
    net = train_feature_net(train_set, seed=seed, device=device,
                            augmentation=augmentation_for(data))
    cache.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": net.state_dict(), "data": data, "size": size})
    return net


def spread_indices(count: int, n: int, seed: int = 0) -> Tensor:
    """min(n, count) distinct indices into a set of count images, by a seeded permutation: not
    the first n, since a folder's images come sorted by class."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n]


@torch.no_grad()
def statistics(net: FeatureNet, images: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Mean [F] and covariance [F, F] (float64) of the features of images [N, C, H, W]."""
    device = next(net.parameters()).device
    feats = torch.cat([net.features(images[i:i + chunk].to(device)).double().cpu()
                       for i in range(0, len(images), chunk)])           # [N, F]
    if feats.shape[0] < 2:
        raise ValueError("a Fréchet distance needs at least 2 images per set")
    return feats.mean(0), torch.cov(feats.T)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """|μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½), in float64.

    tr((Σ₁ Σ₂)^½) = Σ √λ over the eigenvalues λ of Σ₁^½ Σ₂ Σ₁^½ (symmetric PSD, so the
    eigendecomposition is stable where a general matrix square root is not)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh(sigma1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T                          # Σ₁^½
    middle = torch.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_root = middle.clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root
    return float(value.clamp(min=0))


@torch.no_grad()
def class_accuracy(net: FeatureNet, images: Tensor, labels: Tensor, chunk: int = 256) -> float:
    """How often the classifier names labels [N] for images [N, C, H, W], to 4 places."""
    device = next(net.parameters()).device
    predicted = torch.cat([net(c.to(device)).argmax(1).cpu() for c in images.split(chunk)])
    return round(float((predicted == labels.cpu()).float().mean()), 4)


@torch.no_grad()
def per_class_accuracy(net: FeatureNet, images: Tensor, labels: Tensor, num_classes: int,
                       chunk: int = 256) -> list[float | None]:
    """How often the classifier names each class c for the images [N, C, H, W] whose label [N]
    is c, to 4 places; None for a class with no images."""
    device = next(net.parameters()).device
    predicted = torch.cat([net(c.to(device)).argmax(1).cpu() for c in images.split(chunk)])
    labels = labels.cpu()
    out: list[float | None] = []
    for c in range(num_classes):
        mine = labels == c
        out.append(round(float((predicted[mine] == c).float().mean()), 4) if mine.any() else None)
    return out


def score_samples(net: FeatureNet, images: Tensor, reference: tuple[Tensor, Tensor],
                  labels: Tensor | None = None) -> dict[str, float]:
    """A batch of samples against reference statistics (statistics() of the real images):
    {"frechet": the Fréchet distance of images [N, C, H, W] to them, to 4 places} and, given
    the labels [N] the samples were drawn for, "class_accuracy": how often the classifier names
    them."""
    out = {"frechet": round(frechet_distance(*statistics(net, images), *reference), 4)}
    if labels is not None:
        out["class_accuracy"] = class_accuracy(net, images, labels)
    return out


def default_cache() -> Path:
    base = os.environ.get("NERFX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nerfx")
    return Path(base) / "fid"
