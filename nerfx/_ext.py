"""Loads the compiled extension nerfx._C on first use, never at `import nerfx`.

A missing or broken build is reported when an op that needs it is called, with the error and
the fix, so the `torch` and `triton` backends keep working without it.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from types import ModuleType

import torch

BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` from the nerfx checkout "
              "(torch must be installed first; see README.md)")

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_on_load: list[Callable[[], None]] = []


class ExtensionUnavailable(RuntimeError):
    """nerfx._C is not built or failed to load."""


def on_load(hook: Callable[[], None]) -> None:
    """Runs hook (e.g. torch.library registrations) once the extension's ops exist."""
    with _lock:
        _on_load.append(hook)
        loaded = _module is not None
    if loaded:
        hook()


def load() -> ModuleType:
    """The extension module; raises ExtensionUnavailable with the reason and the fix."""
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                _module = importlib.import_module("nerfx._C")
            except Exception as exc:  # noqa: BLE001 - any load failure is reported, not raised here
                _error = f"{type(exc).__name__}: {exc}"
            else:
                for hook in _on_load:
                    hook()
        if _module is None:
            raise ExtensionUnavailable(f"nerfx._C is unavailable ({_error}); {BUILD_HINT}")
        return _module


def unavailable_reason() -> str | None:
    """None when the extension loads, else why not."""
    try:
        load()
    except ExtensionUnavailable as exc:
        return str(exc)
    return None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether nerfx::<op> has a kernel for 'CPU' or 'CUDA' in this build."""
    if unavailable_reason() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"nerfx::{op}", dispatch_key)


def build_info() -> dict:
    """{'cuda': bool, 'cuda_archs': str, 'openmp': bool} of the loaded build."""
    load()
    return json.loads(torch.ops.nerfx.build_info())
