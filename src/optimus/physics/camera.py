r"""Pinhole camera: sampling, projection and the observation noise model.

A camera looks at a target point :math:`c` from position :math:`o`. Its rotation
:math:`R` (rows = camera axes x right, y down, z forward in world coordinates) maps a world
point :math:`p` to camera coordinates :math:`p_c = R (p - o)` and to pixels

.. math::

    u = f \frac{p_{c,x}}{p_{c,z}} + c_x, \qquad v = f \frac{p_{c,y}}{p_{c,z}} + c_y .

The camera is stored as a flat vector of 16 numbers: ``R`` (9, row-major), ``o`` (3),
``f, c_x, c_y`` and the image size (square) so that it travels as a traced array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SIZE = 1000.0
FOCAL = 1200.0
CAMERA_SIZE = 16


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation whose rows are the camera's x (right), y (down), z (forward) axes."""
    fwd = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    fwd /= np.linalg.norm(fwd)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def make_camera(position: np.ndarray, target: np.ndarray, focal: float = FOCAL) -> np.ndarray:
    """The flat 16-vector of a camera at ``position`` looking at ``target``."""
    rot = look_at(position, target)
    return np.concatenate(
        [rot.reshape(-1), np.asarray(position, np.float64), [focal, IMAGE_SIZE / 2] * 1]
        + [[IMAGE_SIZE / 2, IMAGE_SIZE]]
    ).astype(np.float64)


def sample_camera(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """A random camera around ``target``: distance 4–6 m, any azimuth, height 0.8–2.0 m."""
    dist = rng.uniform(4.0, 6.0)
    az = rng.uniform(0.0, 2 * np.pi)
    height = rng.uniform(0.8, 2.0)
    pos = np.array(
        [target[0] + dist * np.cos(az), target[1] + dist * np.sin(az), height], np.float64
    )
    aim = np.array([target[0], target[1], 0.9])
    return make_camera(pos, aim)


def project(camera: jax.Array, points: jax.Array) -> jax.Array:
    r"""Pixel coordinates ``(..., 2)`` of world points ``(..., 3)`` (formula in the module doc)."""
    rot = camera[:9].reshape(3, 3)
    pos = camera[9:12]
    f, cx, cy = camera[12], camera[13], camera[14]
    pc = (points - pos) @ rot.T
    z = jnp.maximum(pc[..., 2], 1e-3)
    return jnp.stack([f * pc[..., 0] / z + cx, f * pc[..., 1] / z + cy], axis=-1)
