"""nerfx.render."""
