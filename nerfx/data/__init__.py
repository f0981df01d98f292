"""Scenes: NeRF-synthetic and Instant-NGP folders, and the built-in lego."""

from nerfx.data.images import (
    ImageDataError,
    ImageDataset,
    ImageSpec,
    load_image_dataset,
    make_shapes,
    parse_image_spec,
)
from nerfx.data.scenes import Scene, SceneError, composite_on, load_scene

__all__ = ["Scene", "SceneError", "composite_on", "load_scene"]
__all__ += ["ImageDataError", "ImageDataset", "ImageSpec", "load_image_dataset", "make_shapes",
            "parse_image_spec"]
