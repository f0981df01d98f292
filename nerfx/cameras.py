"""Camera math in one place: look-at poses, turntables, pixel rays, projection, lens distortion.

Conventions
-----------
Poses are camera-to-world [4, 4] in the OpenGL/NeRF convention: the camera looks down its -z,
+y is up, +x right. Pixel (u, v) is column u and row v from the top-left corner; continuous pixel
coordinates put pixel u over [u, u + 1), so its centre is u + 0.5.

Intrinsics are one tensor, [..., 4] = (fx, fy, cx, cy) in pixels for a pinhole camera, or
[..., 11] = (fx, fy, cx, cy, k1, k2, k3, k4, p1, p2, is_fisheye) for a camera whose lens distorts,
with the coefficients of Instant-NGP's transforms.json. Everything that takes intrinsics takes
either width, so a scene's distortion reaches training rays, evaluation and the renderer through
the same tensor. `split_intrinsics` separates the two parts.

Lens distortion acts on OpenCV's normalised image coordinates (x right, y down, 1 ahead), where
a pixel is (fx * x + cx, fy * y + cy):

- radial-tangential (is_fisheye = 0; COLMAP's OPENCV model, OpenCV's k3, nerfstudio's k4):
      r2 = x^2 + y^2,  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4
      x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      y_d = y radial + 2 p2 x y + p1 (r2 + 2 y^2)
- equidistant fisheye (is_fisheye = 1; COLMAP's and OpenCV's OPENCV_FISHEYE):
      theta = atan(r),  theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)
      (x_d, y_d) = (x, y) theta_d / r
  p1 and p2 play no part in it.

Instant-NGP (src/nerf_loader.cu, read_lens) keeps only k1, k2, p1, p2 for the radial-tangential
model (k3 and k4 land in the slots p1 and p2 then overwrite); nerfx keeps k3 and k4 as the
higher radial terms, which is the same wherever they are zero, as COLMAP's OPENCV model writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PINHOLE_KEYS = ("fx", "fy", "cx", "cy")
LENS_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye")  # the 7 columns after the pinhole
N_PINHOLE, N_WITH_LENS = len(PINHOLE_KEYS), len(PINHOLE_KEYS) + len(LENS_KEYS)

# Instant-NGP's Newton iteration (include/neural-graphics-primitives/common_device.cuh,
# iterative_lens_undistortion, after COLMAP's IterativeCameraModelUndistortion): at most 100
# steps, stop when |step|^2 < 1e-10, central differences of relative size 1e-6 for the Jacobian.
UNDISTORT_ITERATIONS = 100
UNDISTORT_MAX_STEP_NORM = 1e-10
UNDISTORT_REL_STEP = 1e-6


# ---------------------------------------------------------------------------------------------
# Poses


def look_at(position: np.ndarray | Sequence[float], target: Sequence[float] = (0.0, 0.0, 0.0)
            ) -> np.ndarray:
    """Camera-to-world [4, 4] float64, OpenGL convention (camera looks down -z, +y up), world z
    up."""
    position = np.asarray(position, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -forward, position
    return pose


def turntable_poses(n_frames: int, radius: float, elevation_deg: float = 30.0,
                    center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """n_frames cameras on a circle about the world z axis, looking at center. -> [n, 4, 4]"""
    if n_frames < 1 or radius <= 0:
        raise ValueError(f"turntable: need n_frames >= 1 and radius > 0, got {n_frames}, {radius}")
    target = np.asarray(center, dtype=np.float64)
    elevation = np.radians(elevation_deg)
    poses = [look_at(target + radius * np.array([np.cos(a) * np.cos(elevation),
                                                 np.sin(a) * np.cos(elevation),
                                                 np.sin(elevation)]), target)
             for a in np.linspace(0, 2 * np.pi, n_frames, endpoint=False)]
    return torch.tensor(np.stack(poses), dtype=torch.float32)


def focal_from_fov(fov: float, size: float) -> float:
    """Focal length in pixels of a field of view `fov` (radians) across `size` pixels."""
    return 0.5 * size / math.tan(0.5 * fov)


# ---------------------------------------------------------------------------------------------
# Intrinsics and lens distortion


def split_intrinsics(intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[..., 4] or [..., 11] -> (pinhole [..., 4] (fx, fy, cx, cy), lens [..., 7] or None)."""
    width = intrinsics.shape[-1]
    if width == N_PINHOLE:
        return intrinsics, None
    if width == N_WITH_LENS:
        return intrinsics[..., :N_PINHOLE], intrinsics[..., N_PINHOLE:]
    raise ValueError(f"intrinsics must have {N_PINHOLE} columns (fx, fy, cx, cy) or "
                     f"{N_WITH_LENS} (with {', '.join(LENS_KEYS)}), got shape "
                     f"{tuple(intrinsics.shape)}")


def distort(xy: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The forward lens model on normalised coordinates (module docstring).

    xy: [..., 2] undistorted (pinhole) x, y; lens: [..., 7] (k1, k2, k3, k4, p1, p2,
    is_fisheye), broadcast against xy. -> [..., 2] distorted x, y.
    """
    x, y = xy.unbind(-1)  # [...]
    k1, k2, k3, k4, p1, p2, fisheye = lens.to(xy.dtype).unbind(-1)  # [...] each
    r2 = x * x + y * y
    # Radial-tangential (instant-ngp opencv_lens_distortion_delta, plus k3 and k4 radially).
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    ox = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    oy = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
    if lens.dim() == 1 and not bool(fisheye > 0.5):   # one lens, not a fisheye: done
        return torch.stack([ox, oy], -1)
    # Equidistant fisheye (instant-ngp opencv_fisheye_lens_distortion_delta); theta_d / r -> 1
    # as r -> 0.
    r = r2.sqrt()
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    tiny = r > torch.finfo(xy.dtype).eps
    scale = torch.where(tiny, theta_d / torch.where(tiny, r, torch.ones_like(r)),
                        torch.ones_like(r))
    is_fisheye = fisheye > 0.5
    return torch.stack([torch.where(is_fisheye, x * scale, ox),
                        torch.where(is_fisheye, y * scale, oy)], -1)


def undistort(xy_distorted: torch.Tensor, lens: torch.Tensor,
              iterations: int = UNDISTORT_ITERATIONS) -> torch.Tensor:
    """The inverse of `distort`: Newton's method with a central-difference Jacobian, as
    Instant-NGP undistorts at ray generation (include/neural-graphics-primitives/
    common_device.cuh, iterative_lens_undistortion). Runs in float64, so the finite
    differences stay accurate; returns the input's dtype.

    xy_distorted: [..., 2] distorted normalised x, y; lens: [..., 7] broadcast against it.
    -> [..., 2] undistorted x, y.
    """
    target = xy_distorted.double()  # [..., 2]
    lens = lens.to(device=target.device, dtype=torch.float64)
    x = target.clone()
    active = torch.ones(target.shape[:-1], dtype=torch.bool, device=target.device)  # [...]
    eps = torch.finfo(torch.float32).eps  # instant-ngp's smallest difference step
    for _ in range(iterations):
        h = (UNDISTORT_REL_STEP * x.abs()).clamp(min=eps)  # [..., 2]
        hx, hy = h[..., :1], h[..., 1:]
        zero = torch.zeros_like(hx)
        dx, dy = torch.cat([hx, zero], -1), torch.cat([zero, hy], -1)
        # The point and its four neighbours in one call (one set of kernels, not five).
        f, f_xf, f_xb, f_yf, f_yb = distort(torch.stack([x, x + dx, x - dx, x + dy, x - dy]),
                                            lens).unbind(0)  # [..., 2] each
        a, c = ((f_xf - f_xb) / (2 * hx)).unbind(-1)  # Jacobian column 0: d/dx
        b, d = ((f_yf - f_yb) / (2 * hy)).unbind(-1)  # column 1: d/dy
        residual = f - target  # [..., 2]
        det = a * d - b * c
        ok = active & (det.abs() > 1e-12)
        det = torch.where(ok, det, torch.ones_like(det))
        step = torch.stack([(d * residual[..., 0] - b * residual[..., 1]) / det,
                            (a * residual[..., 1] - c * residual[..., 0]) / det], -1)
        step = torch.where(ok[..., None], step, torch.zeros_like(step))
        x = x - step
        active = ok & ((step * step).sum(-1) >= UNDISTORT_MAX_STEP_NORM)
        if not bool(active.any()):
            break
    return x.to(xy_distorted.dtype)


# ---------------------------------------------------------------------------------------------
# Rays and projection


def camera_rays(pose: torch.Tensor, intrinsics: torch.Tensor, pixels_u: torch.Tensor,
                pixels_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres (OpenGL camera: looks down -z, +y up), undistorted through
    the lens when the intrinsics carry one.

    pose: [n, 4, 4] camera-to-world; intrinsics: [n, 4] (fx, fy, cx, cy) or [n, 11] with the
    lens; pixels_u, pixels_v: [n] column and row indices (fractions allowed) ->
    (origins [n, 3], unit directions [n, 3]).
    """
    pinhole, lens = split_intrinsics(intrinsics)
    fx, fy, cx, cy = pinhole.unbind(-1)  # [n] each
    x = (pixels_u + 0.5 - cx) / fx  # OpenCV normalised coordinates: y down
    y = (pixels_v + 0.5 - cy) / fy
    if lens is not None:
        x, y = undistort(torch.stack([x, y], -1), lens).unbind(-1)
    d_cam = torch.stack([x, -y, -torch.ones_like(fx)], -1)  # [n, 3] OpenGL camera frame
    d = torch.nn.functional.normalize((pose[:, :3, :3] @ d_cam[..., None])[..., 0], dim=-1)
    return pose[:, :3, 3].expand_as(d).contiguous(), d


def image_rays(pose: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int,
               start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of one camera's pixels start..stop in row-major order (default: the whole image).

    pose: [4, 4]; intrinsics: [4] or [11] -> (origins [m, 3], unit directions [m, 3]).
    """
    stop = height * width if stop is None else stop
    pixel = torch.arange(start, stop, device=pose.device)  # [m] flat index
    m = pixel.numel()
    return camera_rays(pose.expand(m, 4, 4), intrinsics.expand(m, -1),
                       (pixel % width).float(), (pixel // width).float())


def project(points: torch.Tensor, world_to_camera: torch.Tensor, intrinsics: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """World points onto one camera's image, through its lens when it has one.

    points: [m, 3]; world_to_camera: [4, 4] (inverse of the OpenGL camera-to-world);
    intrinsics: [4] or [11]. -> (continuous pixel coordinates [m, 2] (pixel u covers
    [u, u + 1)), depth along the viewing axis [m], positive in front of the camera).
    """
    pinhole, lens = split_intrinsics(intrinsics)
    fx, fy, cx, cy = pinhole.to(points.dtype).unbind(-1)
    cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]  # [m, 3]
    depth = -cam[:, 2]
    z = depth.clamp(min=1e-6)
    if lens is None:
        return torch.stack([fx * cam[:, 0] / z + cx, -fy * cam[:, 1] / z + cy], -1), depth
    xy = distort(torch.stack([cam[:, 0] / z, -cam[:, 1] / z], -1), lens)  # [m, 2], y down
    return torch.stack([fx * xy[:, 0] + cx, fy * xy[:, 1] + cy], -1), depth


def quaternion_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation [3, 3]."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Rotation [3, 3] -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2 * math.sqrt(trace + 1)
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(max(1 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = s / 4
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q) * (1 if q[0] >= 0 else -1)
