"""Public differentiable ops, each with backends chosen in nerfx.ops._dispatch."""

from nerfx.ops._dispatch import BackendError
from nerfx.ops.composite import Composited, composite_rays
from nerfx.ops.hashgrid import HashGridEncoding, hash_encode

__all__ = ["BackendError", "Composited", "HashGridEncoding", "composite_rays", "hash_encode"]
