r"""The window objective: fit the PD targets of one window to 2D keypoints and a 3D estimate.

Unknowns of a window of :math:`S` physics steps: PD-target offsets
:math:`\theta \in \mathbb{R}^{K\times 21}` at :math:`K` keyframes (``K = 2 … 8``) placed
evenly over the window and linearly interpolated, :math:`q^*_s = b_s + \sum_k W_{sk}\theta_k`
with :math:`b_s` the base target (the pose at the start of the window: "hold still") and
:math:`W` the hat-function interpolation matrix. One compiled function serves every K: the
parameters are always padded to ``K_MAX = 8`` keyframes and the columns of :math:`W` beyond
:math:`K` are zero, so padded parameters do not change the motion.

With the simulated keypoints :math:`P_{fj}` (frame f, joint j), the camera projection
:math:`\pi`, 2D observations :math:`o_{fj}` with confidences :math:`c_{fj}\in\{0,1\}` and
noise level :math:`\sigma_{2D}`, and a root-relative 3D kinematic estimate :math:`e_{fj}` with
noise :math:`\sigma_{3D}`:

.. math::

    L(\theta) = \frac{\sum_{fj} c_{fj}\,\|\pi(P_{fj}) - o_{fj}\|^2 / \sigma_{2D}^2}
                     {2\sum_{fj} c_{fj}}
    + \lambda \frac{1}{3FJ}\sum_{fj}\frac{\|(P_{fj} - P_{f,\mathrm{pelvis}}) - e_{fj}\|^2}
                                       {\sigma_{3D}^2}
    + \alpha\,\frac{\|\theta\|^2}{21 K}.

At the true motion each normalised term has expectation about 1, so the noise floor of
:math:`L` is about :math:`1 + \lambda`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optimus.physics import model as M
from optimus.physics.camera import project

K_MAX = 8
FRAMES_PER_WINDOW = 8  # 0.16 s at 50 Hz
STEPS_PER_WINDOW = FRAMES_PER_WINDOW * M.SUBSTEPS  # 32 physics steps of 5 ms
SIGMA_2D = 2.0  # px
SIGMA_3D = 0.02  # m per coordinate (about 35 mm per joint)
LAMBDA_3D = 0.3
ALPHA_PRIOR = 0.1
THETA_BOUND = 1.0  # rad: box of the offsets


def interpolation_matrix(k: int, steps: int = STEPS_PER_WINDOW, k_max: int = K_MAX):
    """``(steps, k_max)`` hat-function weights of ``k`` evenly spaced keyframes (step ``s`` at
    relative time ``(s + 1) / steps``, keyframes at ``0, 1/(k-1), …, 1``); zero columns beyond
    ``k``."""
    if not 2 <= k <= k_max:
        raise ValueError(f"K must be in [2, {k_max}], got {k}")
    u = (np.arange(steps) + 1.0) / steps
    knots = np.linspace(0.0, 1.0, k)
    w = np.maximum(0.0, 1.0 - np.abs(u[:, None] - knots[None, :]) * (k - 1))
    out = np.zeros((steps, k_max), np.float32)
    out[:, :k] = w / w.sum(1, keepdims=True)
    return out


class WindowData(eqx.Module):
    """Everything one window's objective needs; all arrays (traced under jit)."""

    model: tuple  # the MJX model's arrays (model.model_arrays), traced
    qpos0: jax.Array  # (28,) state at the window start
    qvel0: jax.Array  # (27,)
    base: jax.Array  # (steps, 21) base PD targets
    interp: jax.Array  # (steps, K_MAX)
    camera: jax.Array  # (16,)
    obs2d: jax.Array  # (F, 15, 2) px
    conf: jax.Array  # (F, 15)
    est3d: jax.Array  # (F, 15, 3) root-relative, m
    n_active: jax.Array  # () number of active parameters 21 K


def make_window(
    model_dyn,
    qpos0,
    qvel0,
    camera,
    obs2d,
    conf,
    est3d,
    k: int = 4,
    base=None,
) -> WindowData:
    """Assemble :class:`WindowData`; ``base`` defaults to holding the start pose."""
    as_float = functools.partial(jnp.asarray, dtype=jnp.result_type(float))  # float64 under x64
    qpos0 = as_float(qpos0)
    if base is None:
        base = jnp.broadcast_to(qpos0[7:], (STEPS_PER_WINDOW, M.N_JOINTS))
    return WindowData(
        model=model_dyn,
        qpos0=qpos0,
        qvel0=as_float(qvel0),
        base=as_float(base),
        interp=as_float(interpolation_matrix(k)),
        camera=as_float(camera),
        obs2d=as_float(obs2d),
        conf=as_float(conf),
        est3d=as_float(est3d),
        n_active=as_float(M.N_JOINTS * k),
    )


def simulate(theta: jax.Array, data: WindowData):
    """``(qpos_end, qvel_end, keypoints)`` of the window for flat padded ``theta``
    (``K_MAX * 21``)."""
    th = theta.reshape(K_MAX, M.N_JOINTS)
    targets = data.base + data.interp @ th
    return M.rollout(data.model, data.qpos0, data.qvel0, targets)


def loss_terms(theta: jax.Array, data: WindowData):
    """``(loss, aux)`` with ``aux = (qpos_end, qvel_end, keypoints, terms)``."""
    qpos, qvel, kps = simulate(theta, data)
    r2 = (project(data.camera, kps) - data.obs2d) / SIGMA_2D
    l2 = jnp.sum(data.conf[..., None] * r2**2) / (2.0 * jnp.maximum(jnp.sum(data.conf), 1.0))
    rel = kps - kps[:, M.PELVIS : M.PELVIS + 1]
    l3 = jnp.mean(((rel - data.est3d) / SIGMA_3D) ** 2)
    prior = jnp.sum(theta**2) / data.n_active
    loss = l2 + LAMBDA_3D * l3 + ALPHA_PRIOR * prior
    return loss, (qpos, qvel, kps, jnp.stack([l2, l3, prior]))


@eqx.filter_jit
def value_and_grad(theta: jax.Array, data: WindowData):
    """Jitted ``((loss, aux), grad)``: one compilation serves every window, K and body."""
    return jax.value_and_grad(loss_terms, has_aux=True)(theta, data)


class WindowObjective(eqx.Module):
    """The window objective as a callable of the flat ``21 K`` parameters (an
    ``equinox.Module``: its arrays are traced, so windows share one compilation in
    :func:`optimus.minimize`'s jitted loop).

    ``host_value_and_grad`` is the NumPy ``(value, grad)`` form for
    ``optimus.minimize(..., jac=True)``: it pads to ``K_MAX`` keyframes and calls the single
    compiled :func:`value_and_grad`, so every method and every K reuse one compilation of the
    simulator.
    """

    data: WindowData
    k: int = eqx.field(static=True)

    def pad(self, theta):
        theta = jnp.asarray(theta, jnp.result_type(float)).reshape(self.k, M.N_JOINTS)
        return jnp.zeros((K_MAX, M.N_JOINTS), theta.dtype).at[: self.k].set(theta).reshape(-1)

    def __call__(self, theta: jax.Array) -> jax.Array:
        return loss_terms(self.pad(theta), self.data)[0]

    def host_value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        (val, _), g = value_and_grad(self.pad(theta), self.data)
        return float(val), np.asarray(g, np.float64)[: self.k * M.N_JOINTS]

    def evaluate(self, theta: np.ndarray):
        """``(loss, qpos_end, qvel_end, keypoints, terms)`` as NumPy arrays."""
        (val, (qpos, qvel, kps, terms)), _ = value_and_grad(self.pad(theta), self.data)
        return float(val), np.asarray(qpos), np.asarray(qvel), np.asarray(kps), np.asarray(terms)

    @property
    def n(self) -> int:
        return self.k * M.N_JOINTS

    @property
    def bounds(self) -> tuple[float, float]:
        return (-THETA_BOUND, THETA_BOUND)


def clip_window(
    clip: dict, w: int, k: int, model_dyn, *, qpos=None, qvel=None, ground_truth: bool = False
) -> WindowObjective:
    """The objective of window ``w`` of a dataset clip (:mod:`optimus.physics.motion`).

    The window starts from ``qpos``/``qvel`` (default: the clip's true state at the window
    start). With ``ground_truth`` the base PD targets are the clip's true targets, so
    ``theta = 0`` is the ground-truth motion; otherwise the base holds the start pose."""
    f, s = FRAMES_PER_WINDOW, STEPS_PER_WINDOW
    sl = slice(w * f, (w + 1) * f)
    data = make_window(
        model_dyn,
        clip["qpos"][w] if qpos is None else qpos,
        clip["qvel"][w] if qvel is None else qvel,
        clip["camera"],
        clip["obs2d"][sl],
        clip["conf"][sl],
        clip["est3d"][sl],
        k=k,
        base=clip["targets"][w * s : (w + 1) * s] if ground_truth else None,
    )
    return WindowObjective(data, k)
