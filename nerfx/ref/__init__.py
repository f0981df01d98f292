"""Pure-PyTorch references: the truth every backend of every op is tested against."""

from nerfx.ref.hashgrid import GridLayout, grid_layout, hash_encode

__all__ = ["GridLayout", "grid_layout", "hash_encode"]
