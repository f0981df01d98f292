"""Pure-PyTorch references: the truth every backend of every op is tested against.

The types they share with the ops (results, layouts, geometry) live in nerfx.specs.
"""

from nerfx.ref.attention import attention, attention_varlen
from nerfx.ref.hashgrid import hash_encode

__all__ = ["attention", "attention_varlen", "hash_encode"]
