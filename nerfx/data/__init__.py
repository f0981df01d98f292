"""Scenes (NeRF-synthetic and Instant-NGP folders, the built-in lego) and image datasets (the
built-in shapes, MNIST, CIFAR-10, image folders)."""

from nerfx.data.image_datasets import ImageDataError, ImageDataset
from nerfx.data.image_specs import ImageSpec, load_image_dataset, parse_image_spec
from nerfx.data.scenes import Scene, SceneError, composite_on, load_scene
from nerfx.data.shapes import make_shapes

__all__ = ["Scene", "SceneError", "composite_on", "load_scene"]
__all__ += ["ImageDataError", "ImageDataset", "ImageSpec", "load_image_dataset", "make_shapes",
            "parse_image_spec"]
