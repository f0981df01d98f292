"""Training the Vision Transformer (Dosovitskiy et al., 2021) as an image classifier.

The usual recipe for training a ViT from scratch (DeiT, Touvron et al. 2021, Table 9): AdamW with
weight decay 0.05 on the weight matrices, linear warm-up then cosine decay, label smoothing 0.1,
stochastic depth; bf16 autocast on a GPU; random resized crops and flips; with grad_clip, the
paper's clipping of the gradient's global norm (1 in its Appendix B.1). On the built-in shapes
every training image is new (nerfx.trainers.image_data.FreshShapes): a ViT has no convolution's
built-in bias towards images and needs much data, and procedural data can give any amount, as a
pre-training set would (2,000 steps over a fixed 6,000 images reached 46 % test accuracy). The
test set stays fixed and apart. Flips only where the dataset's classes allow them (never on digits).
With snapshot_every, the accuracy on the first curve_images test images is logged against
training time to RUN/accuracy.csv.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nerfx import distributed
from nerfx.data.image_datasets import ImageDataset
from nerfx.images import line_chart, save_grid, to_uint8, write_png
from nerfx.loop import BatchStream
from nerfx.models.vit import ViT, vit_config
from nerfx.trainers.image_data import (
    AugmentedBatches,
    Prefetched,
    load_image_data,
    training_batches,
)

MODEL = "vit"
DEFAULT_DATA = "shapes"  # nerfx's procedural shapes (nerfx.data)
OPS: tuple[str, ...] = ("attention",)  # the nerfx.ops it runs
DATA_PARALLEL = True  # gradients averaged over processes (nerfx.distributed)
# size: ViT-Ti/S/B/L [paper Table 1; Ti and S from DeiT]; patch 4 suits 16-32 px images.
# Augmentation (DeiT, Touvron et al. 2021): RandomResizedCrop takes area fractions in
# (0.08, 1) on ImageNet; here (0.7, 1) (fraction of the image's area), as a shape may sit near an
# edge and a smaller crop cuts it away (0.6 did, by eye). flips: those the data allows
# (nerfx.data.augment).
_AUGMENT = dict(fresh_images=True, crop_scale=(0.7, 1.0), flips=True)
PRESETS = {
    "gpu": dict(size="Ti", patch_size=4, image_size=32, batch_size=256, lr=1e-3,
                weight_decay=0.05, warmup_steps=500, steps=20_000, label_smoothing=0.1,
                drop_path=0.1, save_every=2000, **_AUGMENT),
    "cpu": dict(size="Ti", patch_size=4, image_size=16, batch_size=64, lr=1e-3,
                weight_decay=0.05, warmup_steps=100, steps=1500, label_smoothing=0.1,
                drop_path=0.1, save_every=250, **_AUGMENT),
    # fast: a small ViT (width 64, 2 heads of 32, depth 4, MLP 4x: 0.20M parameters; the
    # paper's block, class token and learned positions at a size below Ti, as the compute of
    # minutes on a CPU favours: at equal compute it beat width 96 / depth 6 and width 48 / depth
    # 6) on 16 px shapes in 4 px patches (16 tokens), every training image new (fresh_images),
    # DeiT's crop and the flips the data allows. lr 2e-3 is the peak per step of 64 images;
    # Adam beta2 0.99 (between DeiT's 0.999, Adam's default, and MAE's 0.95 [He et al. 2022,
    # Table 8]; it measured better than 0.999 here); the paper's gradient clipping at global
    # norm 1 (Dosovitskiy et al. 2021, appendix B.1); a 400-step (25.6k-image) warm-up. The
    # cosine is laid over 7,000 steps and training stops at 270 s if that comes first (about
    # 5,000 steps of 2 processes on 2 idle cores, the lr still at a fifth of its peak): the whole
    # command stays under 5 minutes on a slower machine too (a cosine ending with the clock
    # instead: cosine_seconds). prefetch: the next 2 batches drawn in a background thread (data
    # are about a sixth of this small model's step). processes: on a CPU, one process of one
    # thread per free core, gradients averaged (a batch of 64 per process): this small model's
    # operators are too short for a team of threads. How each was chosen: benches/RESULTS.md,
    # "ViT on the built-in shapes".
    "cpu-fast": dict(size="Ti", dim=64, heads=2, depth=4, patch_size=4, image_size=16,
                     batch_size=64, lr=2e-3, betas=(0.9, 0.99), grad_clip=1.0,
                     weight_decay=0.05, warmup_steps=400, steps=7000, max_seconds=270.0,
                     label_smoothing=0.1, drop_path=0.0, save_every=1000, snapshot_every=500,
                     curve_images=512, test_images=2000, prefetch=2, processes="auto",
                     **_AUGMENT),
}
PRESETS["gpu-fast"] = PRESETS["cpu-fast"]  # a short run: the same on either device


def build_vit(settings: dict, channels: int, size: int, num_classes: int) -> ViT:
    """The preset's size (Ti/S/B/L; "depth", "dim", "heads" settings override the size's;
    "pos_init" and "init" pick the position embeddings' and the linear layers' start)."""
    depth = {k: settings[k] for k in ("depth", "dim", "heads", "pos_init", "init")
             if k in settings}
    return ViT(vit_config(settings["size"], image_size=size, patch_size=settings["patch_size"],
                          in_channels=channels, num_classes=num_classes,
                          drop_path=settings["drop_path"], **depth))


class Trainer:
    """nerfx.loop.Task for the ViT: one step is one batch of label-smoothed cross-entropy."""

    def __init__(self, settings: dict, train_set: ImageDataset, test_set: ImageDataset,
                 device: torch.device, seed: int,
                 batches: AugmentedBatches | Prefetched | None = None):
        self.settings, self.device, self.test_set, self.seed = settings, device, test_set, seed
        self.classes = train_set.classes
        self.items_per_step = settings["batch_size"]
        self.model = build_vit(settings, train_set.channels, train_set.resolution,
                               len(self.classes)).to(device)
        # fused: one kernel over all the tensors, where CPU tensors would otherwise get torch's
        # per-tensor loop.
        self.optimizer = torch.optim.AdamW(self.model.param_groups(settings["weight_decay"]),
                                           lr=settings["lr"],
                                           betas=tuple(settings.get("betas", (0.9, 0.999))),
                                           fused=device.type in ("cpu", "cuda"))
        # With ema (a decay per step), an exponential moving average of the weights is what
        # predict() evaluates (Polyak averaging; DeiT's and timm's model EMA).
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if settings.get("ema") else None
        self.batches = batches or BatchStream(train_set, settings["batch_size"], seed, device)
        self.train_seconds = 0.0     # in train_step, for the accuracy curve
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else nullcontext())

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to lr, then cosine decay to 0 at the last step or, with
        cosine_seconds, after that much training time if it comes first (the slowest process's
        time, so that every process keeps the same rate). max_seconds only stops the run."""
        s = self.settings
        if step < s["warmup_steps"]:
            return s["lr"] * (step + 1) / s["warmup_steps"]
        done = step / s["steps"]                              # fraction of the run done
        if s.get("cosine_seconds"):
            seconds = distributed.max_over_processes(self.train_seconds)
            done = max(done, seconds / s["cosine_seconds"])
        warm = s["warmup_steps"] / s["steps"]
        progress = (done - warm) / max(1e-9, 1 - warm)
        return s["lr"] * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        try:
            return self._train_step(step)
        finally:
            self.train_seconds += time.perf_counter() - started

    def _train_step(self, step: int) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        images, labels = self.batches.next()
        with self.autocast:
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels,
                               label_smoothing=self.settings["label_smoothing"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.parameters())
        if self.settings.get("grad_clip"):   # global gradient norm (the paper's: 1)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["grad_clip"])
        self.optimizer.step()
        if self.ema is not None:
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()),
                                 1.0 - self.settings["ema"])
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == labels).float().mean()}

    @torch.no_grad()
    def predict(self, chunk: int = 256, n: int | None = None) -> torch.Tensor:
        """Predicted classes [N] of the test split (its first n images), in chunks, by the
        weights' moving average when there is one."""
        model = self.ema if self.ema is not None else self.model
        model.eval()
        out = []
        for i in range(0, min(len(self.test_set), n or len(self.test_set)), chunk):
            images = self.test_set.as_float(
                index=slice(i, min(i + chunk, n or len(self.test_set)))).to(self.device)
            with self.autocast:
                out.append(model(images).argmax(1).cpu())
        model.train()
        return torch.cat(out)

    def snapshot(self, run: Path, step: int) -> None:
        """A point of the accuracy curve: the accuracy on the first curve_images test images
        after step steps and train_seconds of training, appended to accuracy.csv."""
        n = min(self.settings.get("curve_images", 512), len(self.test_set))
        accuracy = (self.predict(n=n) == self.test_set.labels[:n]).float().mean().item()
        path = run / "accuracy.csv"
        with path.open("a") as f:
            if f.tell() == 0:
                f.write("step,train_seconds,test_accuracy,test_images\n")
            f.write(f"{step},{self.train_seconds:.1f},{accuracy:.4f},{n}\n")

    def finish(self, run: Path) -> dict:
        predicted, truth = self.predict(), self.test_set.labels
        k = len(self.classes)
        confusion = torch.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
        per_class = {name: round((confusion[i, i] / confusion[i].sum().clamp(min=1)).item(), 4)
                     for i, name in enumerate(self.classes)}
        write_png(run / "confusion.png", confusion_picture(confusion))
        curve = read_accuracy_curve(run)
        if curve:
            write_png(run / "accuracy.png", line_chart(
                {f"seed {self.seed}": [(seconds, accuracy) for seconds, accuracy, _ in curve]},
                "seconds of training", f"test accuracy ({curve[0][2]} images)"))
        save_grid(prediction_borders(self.test_set.as_float(index=slice(0, 64)),
                                     predicted[:64] == truth[:64]),
                  run / "predictions.png", nrow=8)
        return {"test_accuracy": round((predicted == truth).float().mean().item(), 4),
                "chance": round(1 / k, 4), "per_class_accuracy": per_class,
                "confusion": confusion.tolist(), "classes": list(self.classes),
                "test_images": len(self.test_set),
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def summary(self, metrics: dict) -> str:
        return (f"test accuracy {metrics['test_accuracy']:.1%} on {metrics['test_images']} "
                f"images (chance {metrics['chance']:.1%})")

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "batches": self.batches.state_dict(), "train_seconds": self.train_seconds}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema", state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        self.train_seconds = float(state.get("train_seconds", 0.0))


def read_accuracy_curve(run: Path) -> list[tuple[float, float, int]]:
    """RUN/accuracy.csv's points: (seconds of training, test accuracy, test images); [] when
    the run logged none."""
    path = run / "accuracy.csv"
    if not path.is_file():
        return []
    rows = path.read_text().splitlines()[1:]
    return [(float(s), float(a), int(n)) for _, s, a, n in (r.split(",") for r in rows if r)]


def confusion_picture(confusion: torch.Tensor, cell: int = 24) -> np.ndarray:
    """The confusion matrix [k, k] (rows: truth, columns: prediction) as a uint8 RGB picture,
    each row shaded by its fraction (white 0, dark blue 1)."""
    fraction = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)     # [k, k]
    shade = 1 - fraction.repeat_interleave(cell, 0).repeat_interleave(cell, 1)     # [kc, kc]
    rgb = torch.stack([shade * 0.9, shade * 0.9, 0.35 + 0.65 * shade], -1)          # [kc, kc, 3]
    rgb[::cell, :], rgb[:, ::cell] = 0.6, 0.6                                      # grid lines
    return to_uint8(rgb, (0.0, 1.0)).numpy()


def prediction_borders(images: torch.Tensor, correct: torch.Tensor, width: int = 1
                       ) -> torch.Tensor:
    """images [B, C, H, W] in [-1, 1] with a green (right) or red (wrong) border, as RGB."""
    rgb = images.expand(-1, 3, -1, -1).clone() if images.shape[1] == 1 else images.clone()
    colour = torch.where(correct[:, None], torch.tensor([-1.0, 1.0, -1.0]),
                         torch.tensor([1.0, -1.0, -1.0]))[:, :, None, None]       # [B, 3, 1, 1]
    mask = torch.ones_like(rgb[:1, :1], dtype=torch.bool)
    mask[..., width:-width, width:-width] = False
    return torch.where(mask, colour, rgb)


def make_task(config: dict, device: torch.device) -> Trainer:
    train_set, test_set = load_image_data(config)
    batches = training_batches(config, train_set, config["settings"]["batch_size"], device)
    return Trainer(config["settings"], train_set, test_set, device, config["seed"], batches)
