r"""Physics windows as a meta-training task family (``[tasks] family = "physics"``).

A problem of this family is one window of a dataset clip (:mod:`optimus.physics.motion`)
with a random number of keyframes :math:`K`: the window objective
:math:`L(\theta)` of :mod:`optimus.physics.objective`, started from the clip's true state at
the window start, in the coordinates the optimizers work in inside the benchmark. The box of
the offsets is :math:`[-1, 1]` rad, so box-normalised coordinates are :math:`z = \theta`.
Every problem is padded to ``K_MAX · 21 = 168`` coordinates with a mask (the columns of the
interpolation matrix beyond :math:`K` are zero, so padded coordinates do not move the body),
so one compiled unroll serves every :math:`K`. The starting point is :math:`z_0 = 0` ("hold
the start pose"), as in the first window of a reconstruction.

Unlike the test functions, :math:`\min L` is unknown (about :math:`1 + \lambda` at the noise
floor), so the meta-loss of :mod:`optimus.meta.tasks` is the log-ratio :math:`\log_{10}
L(z_t) / L(z_0)` itself.

The bank holds the windows of one split as stacked arrays plus the nominal body's MJX model
arrays; :meth:`WindowBank.sample` draws ``(window, K)`` uniformly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optimus.physics import model as M
from optimus.physics import objective as O

N_PAD = O.K_MAX * M.N_JOINTS  # 168: every window problem is padded to this size


class WindowProblem(eqx.Module):
    """One window with its number of keyframes; all arrays (vmap for a batch)."""

    qpos0: jax.Array  # (28,)
    qvel0: jax.Array  # (27,)
    interp: jax.Array  # (steps, K_MAX) interpolation weights of this K
    camera: jax.Array  # (16,)
    obs2d: jax.Array  # (F, 15, 2)
    conf: jax.Array  # (F, 15)
    est3d: jax.Array  # (F, 15, 3)
    index: jax.Array  # () int32, the window's row in its bank (clip * windows + window)
    k: jax.Array  # () int32, keyframes
    mask: jax.Array  # (168,) bool, the 21 K active coordinates


class WindowBank(eqx.Module):
    """The windows of a dataset split, stacked, and the nominal body's model arrays."""

    model: tuple
    qpos0: jax.Array  # (W, 28)
    qvel0: jax.Array  # (W, 27)
    camera: jax.Array  # (W, 16)
    obs2d: jax.Array  # (W, F, 15, 2)
    conf: jax.Array  # (W, F, 15)
    est3d: jax.Array  # (W, F, 15, 3)
    interps: jax.Array  # (len(ks), steps, K_MAX)
    ks: jax.Array  # (len(ks),) int32

    @property
    def num_windows(self) -> int:
        return self.qpos0.shape[0]

    def sample(self, key: jax.Array) -> WindowProblem:
        """A uniformly random window with a uniformly random ``K`` from the bank's choices."""
        kw, kk = jax.random.split(key)
        w = jax.random.randint(kw, (), 0, self.num_windows)
        i = jax.random.randint(kk, (), 0, self.ks.shape[0])
        k = self.ks[i]
        return WindowProblem(
            qpos0=self.qpos0[w],
            qvel0=self.qvel0[w],
            interp=self.interps[i],
            camera=self.camera[w],
            obs2d=self.obs2d[w],
            conf=self.conf[w],
            est3d=self.est3d[w],
            index=w.astype(jnp.int32),
            k=k,
            mask=jnp.arange(N_PAD) < k * M.N_JOINTS,
        )

    def window_data(self, problem: WindowProblem) -> O.WindowData:
        """The :class:`~optimus.physics.objective.WindowData` of a problem (base target:
        hold the start pose), as :func:`~optimus.physics.objective.clip_window` builds it."""
        base = jnp.broadcast_to(problem.qpos0[7:], (O.STEPS_PER_WINDOW, M.N_JOINTS))
        return O.WindowData(
            model=self.model,
            qpos0=problem.qpos0,
            qvel0=problem.qvel0,
            base=base,
            interp=problem.interp,
            camera=problem.camera,
            obs2d=problem.obs2d,
            conf=problem.conf,
            est3d=problem.est3d,
            n_active=(problem.k * M.N_JOINTS).astype(jnp.float32),
        )

    def objective(self, problem: WindowProblem, z: jax.Array) -> jax.Array:
        """The window objective at padded coordinates ``z`` (168,) (``z = θ``)."""
        return O.loss_terms(jnp.where(problem.mask, z, 0.0), self.window_data(problem))[0]


def window_bank(split: str, ks: tuple[int, ...], data: dict | None = None) -> WindowBank:
    """All windows of the dataset ``split`` (default: the committed dataset) as a bank.

    Every window starts from the clip's true state at its start, with the base PD target
    holding that pose (the benchmark's first-window setting)."""
    from optimus.physics import motion

    data = motion.load() if data is None else data
    if split not in data:
        raise ValueError(f"unknown physics split {split!r}; available: {sorted(data)}")
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("physics_ks must not be empty")
    for k in ks:
        if not 2 <= k <= O.K_MAX:
            raise ValueError(f"physics_ks: K must be in [2, {O.K_MAX}], got {k}")
    d = data[split]
    clips, n_win = d["qpos"].shape[0], d["qpos"].shape[1] - 1
    f = O.FRAMES_PER_WINDOW
    w_idx = [(c, w) for c in range(clips) for w in range(n_win)]

    def frames(name):
        return np.stack([d[name][c, w * f : (w + 1) * f] for c, w in w_idx])

    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return WindowBank(
        model=M.model_arrays(),
        qpos0=f32(np.stack([d["qpos"][c, w] for c, w in w_idx])),
        qvel0=f32(np.stack([d["qvel"][c, w] for c, w in w_idx])),
        camera=f32(np.stack([d["camera"][c] for c, _ in w_idx])),
        obs2d=f32(frames("obs2d")),
        conf=f32(frames("conf")),
        est3d=f32(frames("est3d")),
        interps=f32(np.stack([O.interpolation_matrix(k) for k in ks])),
        ks=jnp.asarray(ks, jnp.int32),
    )
