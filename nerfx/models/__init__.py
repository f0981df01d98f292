"""nerfx.models: one module per paper, the radiance-field pipelines, and the blocks they share."""
