r"""3D pose errors in millimetres (NumPy).

For predicted and ground-truth keypoints :math:`\hat P, P \in \mathbb{R}^{J\times 3}` of one
frame:

* MPJPE :math:`= \frac1J\sum_j \|\hat p_j - p_j\|`;
* root-aligned MPJPE: the same after subtracting the pelvis (root) from both poses;
* PA-MPJPE: after the similarity transform (scale :math:`s`, rotation :math:`R`, translation
  :math:`t`) minimising :math:`\sum_j\|s R \hat p_j + t - p_j\|^2` (orthogonal Procrustes /
  Umeyama: with centred poses :math:`X, Y` and :math:`X^\top Y = U\Sigma V^\top`,
  :math:`R = V D U^\top`, :math:`D = \mathrm{diag}(1, 1, \det(VU^\top))`,
  :math:`s = \mathrm{tr}(\Sigma D)/\|X\|_F^2`).

Every function takes arrays of shape ``(..., J, 3)`` in metres and returns per-frame errors
``(...)`` in millimetres (NaN for a frame whose prediction is not finite).
"""

from __future__ import annotations

import numpy as np

from optimus.physics.model import PELVIS


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean per-joint position error, mm."""
    return 1000.0 * np.linalg.norm(np.asarray(pred) - np.asarray(gt), axis=-1).mean(-1)


def root_aligned_mpjpe(pred: np.ndarray, gt: np.ndarray, root: int = PELVIS) -> np.ndarray:
    """MPJPE after translating both poses so that the root (pelvis) is at the origin, mm."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    return mpjpe(pred - pred[..., root : root + 1, :], gt - gt[..., root : root + 1, :])


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred`` mapped by the best similarity transform onto ``gt`` (per frame)."""
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    bad = ~np.all(np.isfinite(pred), axis=(-1, -2))  # a diverged frame stays NaN
    pred = np.where(bad[..., None, None], 0.0, pred)
    mx = pred.mean(-2, keepdims=True)
    my = gt.mean(-2, keepdims=True)
    x = pred - mx
    y = gt - my
    h = np.swapaxes(x, -1, -2) @ y
    u, s, vt = np.linalg.svd(h)
    v = np.swapaxes(vt, -1, -2)
    ut = np.swapaxes(u, -1, -2)
    sign = np.sign(np.linalg.det(v @ ut))
    sign = np.where(sign == 0, 1.0, sign)
    d = np.ones(s.shape)
    d[..., -1] = sign
    rot = v @ (d[..., :, None] * ut)
    scale = (s * d).sum(-1) / np.maximum((x**2).sum((-1, -2)), 1e-12)
    out = scale[..., None, None] * (x @ np.swapaxes(rot, -1, -2)) + my
    return np.where(bad[..., None, None], np.nan, out)


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """MPJPE after Procrustes alignment (scale, rotation, translation), mm."""
    return mpjpe(procrustes_align(pred, gt), gt)
