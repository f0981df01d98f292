"""Relative cost of a ViT training step between configurations, on a busy machine too.

    python benches/vit_step_cost.py --threads 1 '{}' '{"dim": 64, "heads": 2, "depth": 4}'

Each configuration (JSON overrides of the ViT's cpu-fast preset) trains on random images: forward,
backward, gradient clipping and AdamW, no data drawing. They run in interleaved blocks of 5 steps
(A B C A B C ...), so a change of load hits all alike; the first two rounds are warm-up. Prints
ms per step (wall and process CPU) and the cost relative to the first configuration.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from nerfx.trainers.vit import PRESETS, build_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="JSON overrides of the cpu-fast preset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for text in args.configs:
        s = {**PRESETS["cpu-fast"], **json.loads(text)}
        model = build_vit(s, 3, s["image_size"], 8)
        optimizer = torch.optim.AdamW(model.param_groups(s["weight_decay"]), lr=s["lr"])
        images = torch.randn(s["batch_size"], 3, s["image_size"], s["image_size"])
        labels = torch.randint(0, 8, (s["batch_size"],))
        runs.append((text, model, optimizer, images, labels, s))
    wall, cpu = [0.0] * len(runs), [0.0] * len(runs)
    for round_ in range(args.rounds):
        for i, (_, model, optimizer, images, labels, s) in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(5):
                loss = F.cross_entropy(model(images), labels,
                                       label_smoothing=s["label_smoothing"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
            if round_ >= 2:
                wall[i] += time.perf_counter() - t0
                cpu[i] += time.process_time() - c0
    steps = 5 * (args.rounds - 2)
    for (text, *_), w, c in zip(runs, wall, cpu, strict=True):
        print(f"{text:60s} {w / steps * 1e3:7.1f} ms/step  {c / steps * 1e3:7.1f} ms CPU  "
              f"{w / wall[0]:5.2f}x")


if __name__ == "__main__":
    main()
