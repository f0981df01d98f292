"""Pure-PyTorch references: the truth every backend of every op is tested against."""

from nerfx.ref.attention import attention, attention_varlen
from nerfx.ref.hashgrid import GridLayout, grid_layout, hash_encode

__all__ = ["GridLayout", "attention", "attention_varlen", "grid_layout", "hash_encode"]
