"""A comparison row for the ViT's --fast figure: a small CNN of about the ViT's parameter count,
trained for the same time on the same data (fresh shapes, the same crop and flips, the same batch
size), scored on the same fixed test set. Not part of the library.

    python benches/vit_vs_cnn.py --seconds 240 --seed 0 --threads 2

Training time is the budget (the learning rate follows a cosine over it); the result is one JSON
line: test accuracy, steps, parameters, the ViT preset's parameter count.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from nerfx.trainers import vit
from nerfx.trainers.image_data import load_image_data, training_batches


class SmallCNN(nn.Module):
    """Three stages of two 3x3 convolutions (width, 2 width, 4 width; GroupNorm, SiLU), a
    stride-2 step between stages, global average pooling and a linear head."""

    def __init__(self, width: int, channels: int = 3, num_classes: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i, c in enumerate((width, 2 * width, 4 * width)):
            for j in range(2):
                stride = 2 if i > 0 and j == 0 else 1
                layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1),
                           nn.GroupNorm(8, c), nn.SiLU()]
                c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> logits [B, classes]."""
        return self.head(self.body(images).mean((-2, -1)))


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, required=True, help="training time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    settings = dict(vit.PRESETS["cpu-fast"])
    config = {"data": "shapes", "seed": args.seed, "settings": settings}
    train_set, test_set = load_image_data(config)
    vit_params = parameters(vit.build_vit(settings, 3, train_set.resolution, 8))
    width = min(range(8, 129, 8),
                key=lambda w: abs(parameters(SmallCNN(w)) - vit_params))  # the ViT's size
    model = SmallCNN(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    batches = training_batches(config, train_set, settings["batch_size"], torch.device("cpu"))
    steps, trained = 0, 0.0
    while trained < args.seconds:
        start = time.perf_counter()
        lr = args.lr * min(1.0, (steps + 1) / settings["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(trained / args.seconds, 1)))
        images, labels = batches.next()
        loss = F.cross_entropy(model(images), labels, label_smoothing=settings["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        trained += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(test_set.as_float(index=slice(i, i + 256))).argmax(1)
                               for i in range(0, len(test_set), 256)])
    print(json.dumps({"model": f"SmallCNN(width={width})", "parameters": parameters(model),
                      "vit_parameters": vit_params, "seed": args.seed, "steps": steps,
                      "train_seconds": round(trained, 1), "threads": args.threads,
                      "test_accuracy": round((predicted == test_set.labels).float().mean().item(),
                                             4), "test_images": len(test_set)}))


if __name__ == "__main__":
    main()
