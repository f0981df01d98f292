"""Rendering: occupancy grid, ray marching and compositing built on nerfx.ops."""

from nerfx.render.occupancy import OccupancyGrid

__all__ = ["OccupancyGrid"]
