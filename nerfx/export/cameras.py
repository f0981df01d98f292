"""A run's cameras as one transforms.json: the training and test views, intrinsics and
camera-to-world poses in the convention of the scene the run was trained from.

Poses are OpenGL camera-to-world matrices (the camera looks down its -z, +y up), in the dataset's
world coordinates, as the scene's own transforms files give them. Each frame carries its split
("train" or "test"), its image path as the scene names it, and its intrinsics at the resolution
of the scene's image files (fl_x, fl_y, cx, cy, w, h, and the lens coefficients where it has
one); a NeRF-synthetic run also gets the shared camera_angle_x, an Instant-NGP run its
aabb_scale, scale and offset, so the file reads back into the run's world with load_scene.
"""

from __future__ import annotations

import math
from pathlib import Path

from nerfx.cameras import LENS_KEYS, N_PINHOLE
from nerfx.data.scenes import is_nerf_synthetic, load_scene
from nerfx.export.density import ExportError
from nerfx.export.frame import scene_frame

SPLITS = ("train", "test")


def cameras_json(config: dict) -> dict:
    """config: the run's config.json (its "scene", "load_downscale", "settings"). -> the JSON."""
    if "scene" not in config:
        raise ExportError("the run's config.json names no scene (not a radiance-field run?)")
    folder = Path(config["scene"])
    frame = scene_frame(folder)
    downscale = config.get("load_downscale", 1)
    out: dict = {}
    frames = []
    for split in SPLITS:
        scene = load_scene(folder, split, downscale=downscale,
                           test_every=config["settings"].get("test_every", 8))
        for name, pose, camera in zip(scene.names, scene.poses, scene.intrinsics, strict=True):
            fx, fy, cx, cy = (float(v) * downscale for v in camera[:N_PINHOLE])
            entry = {"file_path": name, "split": split,
                     "transform_matrix": frame.pose_to_dataset(pose.double().numpy()).tolist(),
                     "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy,
                     "w": scene.width * downscale, "h": scene.height * downscale}
            if scene.has_lens:
                lens = camera[N_PINHOLE:].tolist()
                entry |= {key: float(v) for key, v in zip(LENS_KEYS[:-1], lens[:-1], strict=True)}
                entry["is_fisheye"] = bool(lens[-1] > 0.5)
            frames.append(entry)
        if is_nerf_synthetic(folder) and "camera_angle_x" not in out:
            out["camera_angle_x"] = 2 * math.atan(0.5 * frames[0]["w"] / frames[0]["fl_x"])
        if not is_nerf_synthetic(folder):
            out |= {"aabb_scale": scene.aabb_scale, "scale": frame.scale,
                    "offset": list(frame.offset)}
    out["frames"] = frames
    return out
