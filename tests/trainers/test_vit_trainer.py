"""The ViT trainer's schedule: warm-up, then a cosine to 0 at the last step, or at cosine_seconds
of training when that comes first; max_seconds alone only stops the run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from nerfx.trainers.vit import Trainer


def rate(step: int, seconds: float = 0.0, **settings) -> float:
    s = {"lr": 1e-3, "warmup_steps": 10, "steps": 110, **settings}
    return Trainer.learning_rate(SimpleNamespace(settings=s, train_seconds=seconds), step)


def test_warm_up_then_cosine_over_the_steps():
    assert rate(0) == pytest.approx(1e-4) and rate(9) == pytest.approx(1e-3)
    assert rate(10) == pytest.approx(1e-3)
    assert rate(60) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rate(110) == 0.0
    assert rate(60, seconds=1e6) == rate(60)              # no cosine_seconds: no clock
    assert rate(60, seconds=1e6, max_seconds=10.0) == rate(60)   # a stop, not a schedule


def test_the_cosine_can_end_with_the_clock():
    # Half the time gone at step 20 of 110: the rate of the run's half-way step, 55.
    half_time = rate(20, seconds=50.0, cosine_seconds=100.0)
    assert half_time == pytest.approx(rate(55))
    assert half_time < rate(20)
    assert rate(30, seconds=100.0, cosine_seconds=100.0) == 0.0
    assert rate(20, seconds=1.0, cosine_seconds=100.0) == rate(20)   # the steps bind: unchanged
    assert rate(5, seconds=99.0, cosine_seconds=100.0) == rate(5)    # warm-up counts steps only
