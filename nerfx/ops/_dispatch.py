"""Backend choice, in one place, as data.

Each op lists its backends; each backend says which devices and dtypes it serves and, through
`unavailable`, why it cannot run here. `backend="auto"` walks AUTO_ORDER for the tensors' device
and takes the first that can serve; an explicit backend that cannot serve raises one error with
all its reasons. A run setting replaces "auto": `use_backend(name)` (what the CLIs' --backend
sets), else the environment variable NERFX_BACKEND. It applies to the ops that have a backend of
that name; the others keep choosing themselves. `chosen_backends(device)` says what each op runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from nerfx import _ext

BACKENDS = ("cuda", "cpu", "triton", "torch")
# Fastest first. Triton runs on CPU tensors only in the interpreter, so auto never picks it there.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
ENV_VAR = "NERFX_BACKEND"


class BackendError(RuntimeError):
    """The requested backend cannot serve this call."""


_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("nerfx_backend",
                                                                      default=None)


# Inside a use_backend block: (op, device type) -> the backends chosen there (per call, or per
# trace under torch.compile), so that a run records what really ran.
_RAN: contextvars.ContextVar[dict[tuple[str, str], set[str]] | None] = \
    contextvars.ContextVar("nerfx_backends_ran", default=None)


def run_backend() -> str:
    """The run's backend setting: use_backend's, else NERFX_BACKEND's, else "auto"."""
    name = _OVERRIDE.get()
    if name is None:
        name = os.environ.get(ENV_VAR, "auto") or "auto"
    return name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Within the block, every op called with backend="auto" uses `name` where it has a backend
    of that name (ops without one choose as usual); "auto" restores the automatic choice, None
    leaves the setting as it is (an enclosing block's, else NERFX_BACKEND's).

        with nerfx.ops.use_backend("torch"):
            pipeline.render(o, d)

    torch.compile reads the setting when it traces: a function compiled under one setting keeps
    that choice (call torch._dynamo.reset() before compiling under another).
    """
    if name is not None and name not in backend_names():
        raise BackendError(f"unknown backend {name!r}; choose from {backend_names()}")
    token = _OVERRIDE.set(name) if name is not None else None
    record = _RAN.set({})  # what ops run inside the block: chosen_backends reports it
    try:
        yield
    finally:
        _RAN.reset(record)
        if token is not None:
            _OVERRIDE.reset(token)


def backend_names() -> list[str]:
    """The names use_backend takes: "auto" and every backend of the registered ops."""
    return sorted({"auto", *BACKENDS, *(b for op in REGISTRY.values() for b in op.backends)})


def _no_reason(device: torch.device) -> str | None:
    return None


def _no_limit(problem: tuple) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device types served
    dtypes: tuple[torch.dtype, ...]  # tensor dtypes served
    run: Callable
    unavailable: Callable[[torch.device], str | None] = field(default=_no_reason)
    # Sizes served: why not for an op's `problem` tuple (e.g. attention's head dim), else None.
    limits: Callable[[tuple], str | None] = field(default=_no_limit)

    def reasons(self, device: torch.device, dtypes: tuple[torch.dtype, ...],
                problem: tuple = ()) -> list[str]:
        found = []
        if device.type not in self.devices:
            found.append(f"runs on {'/'.join(self.devices)} tensors, not {device.type}")
        bad = sorted({str(d).removeprefix("torch.") for d in dtypes if d not in self.dtypes})
        if bad:
            found.append(f"does not support dtype {', '.join(bad)}")
        limit = self.limits(problem) if problem else None
        if limit:
            found.append(limit)
        if not found:
            why = self.unavailable(device)
            if why:
                found.append(why)
        return found


def extension_kernel(op: str) -> Callable[[torch.device], str | None]:
    """Availability check of a compiled backend: the extension loads and has the device's kernel."""

    def unavailable(device: torch.device) -> str | None:
        why = _ext.unavailable_reason()
        if why:
            return why
        key = "CUDA" if device.type == "cuda" else "CPU"
        if not _ext.has_kernel(op, key):
            return f"nerfx._C was built without {key} kernels; {_ext.BUILD_HINT}"
        return None

    return unavailable


def triton_available(device: torch.device) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs on CPU tensors only with TRITON_INTERPRET=1 set before import"
    return None


class OpBackends:
    """The backends of one op and the choice among them."""

    def __init__(self, op: str, backends: list[Backend],
                 auto_order: dict[str, tuple[str, ...]] | None = None):
        self.op = op
        self.backends = {b.name: b for b in backends}
        self.auto_order = AUTO_ORDER if auto_order is None else auto_order

    def select(self, requested: str, device: torch.device, dtypes: tuple[torch.dtype, ...],
               problem: tuple = ()) -> Backend:
        """The backend that serves these tensors; raises BackendError with the reasons if none.

        problem: hashable sizes some backends are limited in (plain ints), checked by `limits`.
        """
        return self.backends[_choose(self.op, requested, device.type, tuple(dtypes),
                                     tuple(problem))]

    def choose(self, requested: str, device_type: str, dtypes: tuple[torch.dtype, ...],
               problem: tuple = ()) -> str:
        if requested == "auto":
            setting = run_backend()
            requested = setting if setting in self.backends else "auto"
        device = torch.device(device_type)
        if requested == "auto":
            for name in self.auto_order.get(device.type, ("torch",)):
                backend = self.backends.get(name)
                if backend is not None and not backend.reasons(device, dtypes, problem):
                    return name
            raise BackendError(f"{self.op}: no backend serves {device.type} tensors of "
                               f"{[str(d) for d in dtypes]}")
        if requested not in self.backends:
            raise BackendError(f"{self.op}: unknown backend {requested!r}; "
                               f"choose from {['auto', *self.backends]}")
        reasons = self.backends[requested].reasons(device, dtypes, problem)
        if reasons:
            raise BackendError(f"{self.op}: backend {requested!r} cannot serve this call: "
                               + "; ".join(reasons))
        return requested

    def describe(self, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> str:
        """Which backend "auto" (under the run's setting) picks for these tensors."""
        try:
            return self.choose("auto", device.type, tuple(dtypes))
        except BackendError as exc:
            return f"none ({exc})"


REGISTRY: dict[str, OpBackends] = {}


@torch._dynamo.assume_constant_result
def _choose(op: str, requested: str, device_type: str, dtypes: tuple[torch.dtype, ...],
            problem: tuple = ()) -> str:
    # Evaluated eagerly when torch.compile traces an op: the choice is a constant of the graph.
    name = REGISTRY[op].choose(requested, device_type, dtypes, problem)
    ran = _RAN.get()
    if ran is not None:
        ran.setdefault((op, device_type), set()).add(name)
    return name


def register(op: OpBackends) -> OpBackends:
    REGISTRY[op.op] = op
    return op


def chosen_backends(device: torch.device | str, dtype: torch.dtype = torch.float32,
                    ops: Iterable[str] | None = None) -> dict[str, str]:
    """What each registered op (or each of `ops`) runs on `device`: inside a use_backend block,
    the backends it has run there, where it has (e.g. "sdpa, triton" when some calls had a head
    dim the Triton kernel does not take); else what backend="auto" picks for `dtype` tensors
    under the run's setting (use_backend or NERFX_BACKEND): {op: backends, or "none (why)"}.
    Asking about a compiled op that has not run loads the extension."""
    device = torch.device(device)
    names = sorted(REGISTRY) if ops is None else sorted(ops)
    ran = _RAN.get() or {}
    return {name: ", ".join(sorted(ran[name, device.type])) if (name, device.type) in ran
            else REGISTRY[name].describe(device, (dtype,)) for name in names}
