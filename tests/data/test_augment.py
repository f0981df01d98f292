"""Augmentations (crop and flips) and the flips each dataset allows; the endless shapes stream."""

from __future__ import annotations

import pytest
import torch

from nerfx.data import make_shapes
from nerfx.data.augment import Augmentation, allowed_flips, augmentation_for
from nerfx.data.shapes import load_shapes, shapes_seed


def test_the_shapes_stream_goes_on_where_a_set_stops():
    """make_shapes(n, start=k) is images k .. k + n - 1 of the seed's sequence."""
    head, head_labels = make_shapes(30, 16, seed=5)
    tail, tail_labels = make_shapes(12, 16, seed=5, start=18)
    assert torch.equal(tail, head[18:]) and torch.equal(tail_labels, head_labels[18:])
    assert not torch.equal(make_shapes(12, 16, seed=5, start=19)[0], tail)
    train = load_shapes("train", size=16, n=8, seed=1)
    assert torch.equal(make_shapes(8, 16, shapes_seed("train", 1))[0], train.images)
    assert shapes_seed("train", 1) != shapes_seed("test", 1)
    with pytest.raises(ValueError, match="start >= 0"):
        make_shapes(1, 16, start=-1)


@pytest.mark.parametrize("spec,flips", [("shapes", (True, True)), ("cifar10:x", (True, False)),
                                        ("mnist:x", (False, False)),
                                        ("folder:digits", (False, False))])
def test_flips_only_where_the_classes_allow(spec, flips):
    """Shapes are mirror-symmetric at any rotation; CIFAR-10 keeps left-right; digits (MNIST,
    and folders, which may hold digits) are never flipped."""
    assert allowed_flips(spec) == flips
    augment = augmentation_for(spec)
    assert (augment.flip_x, augment.flip_y) == flips
    assert not augmentation_for(spec, flips=False).flip_x


def test_digits_folders_come_back_unchanged_without_a_crop():
    images = torch.rand(16, 1, 8, 8)                                     # [B, 1, 8, 8]
    augment = augmentation_for("folder:digits")
    assert augment.identity and augment(images, torch.Generator()) is images


def test_flips_are_exact_and_both_kinds_occur():
    images = torch.rand(64, 3, 8, 8)                                     # [B, 3, 8, 8]
    out = augmentation_for("shapes")(images, torch.Generator().manual_seed(0))
    kinds = []
    for x, y in zip(images, out, strict=True):
        candidates = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
        match = [i for i, c in enumerate(candidates) if torch.allclose(y, c, atol=1e-5)]
        assert match, "an output that is no flip of its input"
        kinds.append(match[0])
    assert set(kinds) == {0, 1, 2, 3}
    only_x = Augmentation(flip_x=True)(images, torch.Generator().manual_seed(0))
    assert all(torch.allclose(y, x, atol=1e-5) or torch.allclose(y, x.flip(-1), atol=1e-5)
               for x, y in zip(images, only_x, strict=True))


def test_crop_is_seeded_keeps_the_shape_and_zooms_in():
    augment = Augmentation(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    ramp = torch.linspace(-1, 1, 16).expand(4, 1, 16, 16)                # [4, 1, 16, 16]
    a = augment(ramp, torch.Generator().manual_seed(1))
    b = augment(ramp, torch.Generator().manual_seed(1))
    assert a.shape == ramp.shape and torch.equal(a, b)
    # Half the side: the ramp's range across the crop halves.
    span = a[..., 0, -1] - a[..., 0, 0]
    torch.testing.assert_close(span, torch.full_like(span, 1.0), atol=0.02, rtol=0)
    draws = augment.draw(4, torch.Generator().manual_seed(1))
    assert torch.equal(augment(ramp, draws=draws), a)
