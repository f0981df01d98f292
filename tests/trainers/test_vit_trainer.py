"""The ViT trainer's schedule: warm-up, then a cosine to 0 at the last step, or at max_seconds of
training when the time runs out first."""

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
    assert rate(60, seconds=1e6) == rate(60)              # no max_seconds: time plays no part


def test_the_cosine_ends_when_the_time_budget_does():
    # Half the time gone at step 20 of 110: the rate of the run's half-way step, 55.
    half_time = rate(20, seconds=50.0, max_seconds=100.0)
    assert half_time == pytest.approx(rate(55))
    assert half_time < rate(20)
    assert rate(30, seconds=100.0, max_seconds=100.0) == 0.0
    assert rate(20, seconds=1.0, max_seconds=100.0) == rate(20)   # the steps bind: unchanged
    assert rate(5, seconds=99.0, max_seconds=100.0) == rate(5)    # warm-up counts steps only
