"""The image trainers' training batches: fresh shapes (new every step, the same per seed, never a
test image), the flips each dataset allows, and augmentation that torchrun and resume repeat."""

from __future__ import annotations

import torch

from nerfx.data import load_image_dataset
from nerfx.trainers.image_data import (
    FreshShapes,
    Prefetched,
    fresh,
    load_image_data,
    training_batches,
)

CPU = torch.device("cpu")


def config(data: str = "shapes", seed: int = 0, **settings) -> dict:
    return {"data": data, "seed": seed,
            "settings": {"image_size": 16, "train_images": 32, "test_images": 16, **settings}}


def test_fresh_shapes_are_new_every_step_and_the_same_per_seed():
    a, b = FreshShapes(16, 8, seed=0, device=CPU), FreshShapes(16, 8, seed=0, device=CPU)
    first, second = a.next()[0], a.next()[0]                        # [8, 3, 16, 16] each
    assert not torch.equal(first, second)
    assert torch.equal(b.next()[0], first) and torch.equal(b.next()[0], second)
    assert not torch.equal(FreshShapes(16, 8, seed=1, device=CPU).next()[0], first)
    # The stream begins with the fixed train split and never meets the test split.
    train = load_image_dataset("shapes", "train", size=16, n=16)
    assert torch.equal(torch.cat([first, second]), train.as_float())
    test = load_image_dataset("shapes", "test", size=16, n=64).as_float()
    assert not (torch.cat([first, second])[:, None] == test[None]).flatten(2).all(2).any()
    # Resumed from its state, the stream goes on where it was.
    c = FreshShapes(16, 8, seed=0, device=CPU)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.next()[0], a.next()[0])


def test_fresh_only_when_asked_and_on_procedural_data():
    assert fresh(config(fresh_images=True))
    assert not fresh(config()) and not fresh(config("folder:digits", fresh_images=True))
    train, test = load_image_data(cfg := config(fresh_images=True))
    assert len(train) == 0 and len(test) == 16 and cfg["image_shape"] == [3, 16, 16]
    assert len(load_image_data(config())[0]) == 32


def test_a_digits_folder_is_never_flipped():
    cfg = config("folder:digits", flips=True, crop_scale=[1.0, 1.0])
    digits = load_image_dataset("shapes", "train", size=16, n=32)   # stands in for the folder
    batches = training_batches(cfg, digits, 8, CPU)
    assert batches.augmentation.identity
    assert not batches.augmentation.flip_x and not batches.augmentation.flip_y
    shapes = training_batches(config(flips=True), digits, 8, CPU)
    assert shapes.augmentation.flip_x and shapes.augmentation.flip_y


def test_augmentation_repeats_on_resume_and_across_processes():
    """The draws of a batch follow its place in the stream: a resumed stream augments as the
    straight one did, and two processes' slices make up one process's double batch."""
    cfg = config(fresh_images=True, flips=True, crop_scale=[0.5, 1.0])
    train, _ = load_image_data(cfg)
    straight = training_batches(cfg, train, 8, CPU)
    straight.next()
    resumed = training_batches(cfg, train, 8, CPU)
    resumed.load_state_dict(straight.state_dict())
    assert torch.equal(resumed.next()[0], straight.next()[0])
    one = training_batches(cfg, train, 8, CPU).next()[0]            # [8, 3, 16, 16]
    halves = []
    for rank in range(2):
        part = training_batches(cfg, train, 4, CPU)
        part.stream.global_batch, part.stream.rank = 8, rank
        halves.append(part.next()[0])
    torch.testing.assert_close(torch.cat(halves), one)


def test_prefetched_batches_are_the_same_batches_and_resume_alike():
    cfg = config(fresh_images=True, flips=True, crop_scale=[0.5, 1.0])
    train, _ = load_image_data(cfg)
    plain = training_batches(cfg, train, 8, CPU)
    ahead = training_batches({**cfg, "settings": {**cfg["settings"], "prefetch": 2}}, train, 8,
                             CPU)
    assert isinstance(ahead, Prefetched)
    for _ in range(3):
        torch.testing.assert_close(ahead.next(), plain.next(), rtol=0, atol=0)
    assert ahead.state_dict() == plain.state_dict()       # the batches handed out, not made
    resumed = training_batches(cfg, train, 8, CPU)
    resumed.load_state_dict(ahead.state_dict())
    torch.testing.assert_close(ahead.next(), resumed.next(), rtol=0, atol=0)
    ahead.load_state_dict(plain.state_dict())              # back one batch, mid-stream
    torch.testing.assert_close(ahead.next(), plain.next(), rtol=0, atol=0)
    ahead.close()
