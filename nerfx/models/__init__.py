"""nerfx.models."""
