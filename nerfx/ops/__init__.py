"""Public differentiable ops, each with backends chosen in nerfx.ops._dispatch."""

from nerfx.ops._dispatch import BackendError
from nerfx.ops.attention import MultiHeadAttention, attention, attention_varlen
from nerfx.ops.composite import Composited, composite_rays
from nerfx.ops.hashgrid import HashGridEncoding, hash_encode
from nerfx.ops.raymarch import RaySamples, march_rays

__all__ = ["BackendError", "Composited", "HashGridEncoding", "MultiHeadAttention", "RaySamples",
           "attention", "attention_varlen", "composite_rays", "hash_encode", "march_rays"]
