"""Public differentiable ops, each with backends chosen in nerfx.ops._dispatch.

The backend is a run setting: `with use_backend("torch"): ...` (or NERFX_BACKEND) replaces the
automatic choice; `chosen_backends(device)` says what each op runs under it.
"""

from nerfx.ops._dispatch import BackendError, backend_names, chosen_backends, use_backend
from nerfx.ops.adam import SkipZeroAdam, adam_step
from nerfx.ops.attention import MultiHeadAttention, attention, attention_varlen
from nerfx.ops.composite import Composited, composite_rays
from nerfx.ops.hashgrid import HashGridEncoding, hash_encode
from nerfx.ops.raymarch import RaySamples, march_rays

__all__ = ["BackendError", "Composited", "HashGridEncoding", "MultiHeadAttention", "RaySamples",
           "SkipZeroAdam", "adam_step", "attention", "attention_varlen", "backend_names",
           "chosen_backends", "composite_rays", "hash_encode", "march_rays", "use_backend"]
