"""Fixtures of the op tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def cpu_has_avx2() -> bool:
    """Whether this CPU has what the cpu backend's AVX2 loops need (AVX2, FMA, F16C)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return all(f in flags for f in ("avx2", "fma", "f16c"))


@pytest.fixture(params=["avx2", "portable"])
def cpu_path(request, monkeypatch):
    """The cpu backend's loops for this test: its AVX2 ones where the CPU has them
    (NERFX_CPU_PATH=avx2: whatever the rays' lengths), or its portable ones
    (NERFX_CPU_PATH=portable); other backends run once, under "avx2"."""
    if request.param == "portable" and request.node.callspec.params.get("backend", "cpu") != "cpu":
        pytest.skip("the portable loops are the cpu backend's")
    monkeypatch.setenv("NERFX_CPU_PATH", request.param)
    return request.param
