"""The backend as a run setting: use_backend, NERFX_BACKEND and what chosen_backends reports."""

from __future__ import annotations

import pytest
import torch

from nerfx.ops import BackendError, HashGridEncoding, chosen_backends, use_backend
from nerfx.ops.hashgrid import BACKENDS


def test_use_backend_replaces_auto_and_is_scoped():
    cpu = torch.device("cpu")
    assert BACKENDS.select("auto", cpu, (torch.float32,)).name == "cpu"
    with use_backend("torch"):
        assert BACKENDS.select("auto", cpu, (torch.float32,)).name == "torch"
        assert chosen_backends("cpu")["hash_encode"] == "torch"
        # An explicit backend= still wins over the run setting.
        assert BACKENDS.select("cpu", cpu, (torch.float32,)).name == "cpu"
    assert chosen_backends("cpu")["hash_encode"] == "cpu"


def test_use_backend_leaves_ops_without_that_backend_alone():
    with use_backend("cpu"):
        picks = chosen_backends("cpu")
    assert picks["hash_encode"] == "cpu" and picks["attention"] == "sdpa"


def test_use_backend_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("NERFX_BACKEND", "torch")
    assert chosen_backends("cpu")["composite_rays"] == "torch"
    with use_backend("auto"):
        assert chosen_backends("cpu")["composite_rays"] == "cpu"
    with use_backend(None):  # a command line without --backend: the environment's setting
        assert chosen_backends("cpu")["composite_rays"] == "torch"
        with use_backend("sdpa"), use_backend(None):  # or the enclosing block's
            assert chosen_backends("cpu", ops=["attention"]) == {"attention": "sdpa"}


def test_use_backend_refuses_unknown_names():
    with pytest.raises(BackendError, match="unknown backend 'fast'"), use_backend("fast"):
        pass


def test_a_backend_that_cannot_serve_says_why():
    with use_backend("cuda"):
        assert chosen_backends("cpu")["hash_encode"].startswith("none (")
        with pytest.raises(BackendError, match="cannot serve"):
            HashGridEncoding(n_levels=2, log2_hashmap_size=8)(torch.rand(4, 3))


def test_the_module_follows_the_run_setting():
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10)
    x = torch.rand(64, 3)
    with use_backend("torch"):
        want = enc(x)
    torch.testing.assert_close(enc(x), want)


def test_chosen_backends_reports_what_ran_in_the_block():
    """A run records the backends its ops really ran, fallbacks included: attention with a
    head dim over the Triton kernel's limit runs SDPA even where Triton is the choice."""
    from nerfx.ops import attention

    q = torch.randn(1, 2, 5, 8)
    with use_backend("torch"):
        assert chosen_backends("cpu", ops=["attention"]) == {"attention": "torch"}  # predicted
        attention(q, q, q, backend="sdpa")
        attention(q, q, q)
        assert chosen_backends("cpu", ops=["attention"]) == {"attention": "sdpa, torch"}
    with use_backend("torch"):  # a new block records afresh
        assert chosen_backends("cpu", ops=["attention"]) == {"attention": "torch"}
    attention(q, q, q)  # outside any block nothing is recorded
    assert chosen_backends("cpu", ops=["attention"]) == {"attention": "sdpa"}
