"""Scenes: NeRF-synthetic and Instant-NGP folders, and the built-in lego."""

from nerfx.data.scenes import Scene, SceneError, composite_on, load_scene

__all__ = ["Scene", "SceneError", "composite_on", "load_scene"]
