"""nerfx.data."""
