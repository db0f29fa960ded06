r"""A Gaussian-smoothing phase for rough objectives, a layer around any one-evaluation-per-step
optimizer (ours; ``NetConfig.smooth_rounds``).

On Rastrigin or Levy the gradient at a point says almost nothing about where the global
minimum lies: its ripples dominate (at the benchmark's starting points the cosine between
:math:`-\nabla f` and the direction to the optimum is 0.1–0.5 at n = 10 … 100), so every
local method, learned or not, descends into a basin near its start. The gradient of the
Gaussian-smoothed objective :math:`f_\rho(x) = \mathbb E_\xi f(x + \rho\xi)` keeps the bowl
and averages the ripples away, and a Monte-Carlo mean of gradients at perturbed points
estimates it: 100 gradients at :math:`\rho = 0.2` box half-widths point towards the optimum
with a cosine of 0.8–0.9 on Rastrigin and Levy (``bench_results/multimodal_signal.md``). No
such signal exists on Ackley, whose bowl is flat at the box's scale.

**Detection** (no extra evaluation). The wrapped optimizer runs as usual for its first two
evaluations, :math:`x_0` and its first step :math:`x_1 = x_0 + s` (the shipped models' long
probe, 0.1 box half-widths along :math:`-g_0`). If the objective is smooth at that scale the
two gradients nearly agree, and the trapezoid rule predicts the change of the value; on a
rippled one neither holds. The phase starts when

.. math:: \cos(g_0, g_1) < c_{\min}, \qquad
   \frac{|f_1 - f_0 - \tfrac12 (g_0 + g_1)^\top s|}{|f_1 - f_0| + |\tfrac12 (g_0 + g_1)^\top s|
   + 64\,\varepsilon\,(|f_0| + |f_1|)} \ge t_{\min} \quad\text{and}\quad n \ge n_{\min}

(``smooth_cos``, ``smooth_trap``, ``smooth_min_dim``). The trapezoid test is exact on a
quadratic, so a probe that crosses a smooth minimum (the gradient reverses, the cosine is
negative) does not start the phase; the :math:`\varepsilon` term (machine epsilon) calls a
difference lost in rounding smooth. Otherwise the layer passes every evaluation through
and costs nothing.

**Phase.** From the centre :math:`c = x_0`, ``R`` rounds (``smooth_rounds``) of ``k``
evaluations (``smooth_samples``, antithetic pairs :math:`c \pm \rho_r\xi_j`,
:math:`\xi_j \sim N(0, I)` on the valid coordinates), :math:`\rho_r = \rho_0\gamma^r`
(``smooth_rho``, ``smooth_decay``). After each round, with :math:`\hat g` the mean of its
finite gradients,

.. math:: c \leftarrow c - \alpha\,\hat g, \qquad
   \alpha = \frac{s_0}{\mathrm{rms}(\hat g)}\ \text{(first round)}, \qquad
   \alpha = \frac{\Delta c^\top \Delta c}{\Delta c^\top \Delta\hat g}
   \ \text{(later, when positive)},

a first step of RMS length :math:`s_0` (``smooth_step``) and then Barzilai–Borwein steps on the
smoothed objective, every step capped at RMS length :math:`s_{\max}` (``smooth_max_step``). One
more evaluation at the final centre ends the phase; the wrapped optimizer is then started
afresh (its ``init``) at the best point evaluated so far, with the budget that is left.
Every evaluation counts against the budget, and :func:`optimus.minimize` returns the best
point seen, as always; it also shortens the phase to fit its budget
(:data:`optimus.solve.SMOOTH_BUDGET_FRACTION`).

A sample with a non-finite value or gradient is skipped (it adds nothing to its round's
mean); the driver does not retry it (:attr:`SmoothState.handles_nonfinite`). With bounds the
centre stays in the box (:meth:`SmoothState.project`), and the samples are clipped into it.
The counters the driver reports (``n_fallback``, ``n_reject``) add the wrapped optimizer's
counts before the fresh start to those after it.

The layer is not learned and is off in meta-training; like the probe, the SR1 direction and
the restarts, its parameters were chosen on validation problems after meta-training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.optimizers.base import WrapperState

SMOOTH_SEED = 1  # the perturbations come from fold_in(PRNGKey(SMOOTH_SEED), round, pair)

OFF, DETECT, SMOOTH, CENTRE = 0, 1, 2, 3  # phases; OFF also after the phase has ended
TRAP_ROUNDING = 64.0  # the trapezoid test's allowance for rounding, in machine epsilons


class SmoothState(WrapperState):
    """State of the smoothing layer around an inner optimizer state."""

    inner: Any
    x: jax.Array  # the next trial point
    phase: jax.Array  # int32: DETECT, SMOOTH, CENTRE or OFF
    count: jax.Array  # evaluations seen by the layer
    extra: jax.Array  # evaluations of the phase (each counts as an iteration)
    nit_offset: jax.Array  # the inner optimizer's iterations before the handoff
    g_first: jax.Array  # gradient at x_0 (detection)
    f_first: jax.Array  # value at x_0 (detection)
    centre: jax.Array
    centre_prev: jax.Array
    g_sum: jax.Array
    n_sum: jax.Array  # finite gradients in g_sum
    g_prev: jax.Array  # previous round's mean gradient
    alpha: jax.Array
    round: jax.Array
    sample: jax.Array  # index of the next sample within its round
    best_x: jax.Array
    best_f: jax.Array
    fallback_offset: jax.Array  # the inner optimizer's n_fallback before the handoff
    reject_offset: jax.Array  # the inner optimizer's n_reject before the handoff

    @property
    def nit(self) -> jax.Array:
        return self.nit_offset + self.extra + self.inner.nit

    @property
    def n_reject(self) -> jax.Array:
        return self.reject_offset + getattr(self.inner, "n_reject", jnp.zeros((), jnp.int32))

    @property
    def n_fallback(self) -> jax.Array:
        return self.fallback_offset + getattr(self.inner, "n_fallback", jnp.zeros((), jnp.int32))

    @property
    def handles_nonfinite(self) -> jax.Array:
        """True while the pending point is a sample or the final centre: the layer skips a
        non-finite evaluation there itself, and the driver must pass it on unretried."""
        return (self.phase == SMOOTH) | (self.phase == CENTRE)

    def project(self, lo: float, hi: float) -> SmoothState:
        """The state with the centre clipped into ``[lo, hi]``, a pending sample moved with it,
        and the pending point clipped (the driver's projection for bounded problems)."""
        centre = jnp.clip(self.centre, lo, hi)
        moving = self.handles_nonfinite
        x = jnp.clip(self.x + jnp.where(moving, centre - self.centre, 0), lo, hi)
        return eqx.tree_at(lambda s: (s.x, s.centre), self, (x.astype(self.x.dtype), centre))


def smooth_init(inner: Any) -> SmoothState:
    """Wrap the initial state of the inner optimizer (whose ``x`` is the starting point)."""
    x = inner.x
    z = jnp.zeros_like(x)
    i0 = jnp.zeros((), jnp.int32)
    return SmoothState(
        inner=inner,
        x=x,
        phase=jnp.asarray(DETECT, jnp.int32),
        count=i0,
        extra=i0,
        nit_offset=i0,
        g_first=z,
        f_first=jnp.asarray(jnp.nan, x.dtype),
        centre=x,
        centre_prev=x,
        g_sum=z,
        n_sum=i0,
        g_prev=z,
        alpha=jnp.zeros((), x.dtype),
        round=i0,
        sample=i0,
        best_x=x,
        best_f=jnp.asarray(jnp.inf, x.dtype),
        fallback_offset=i0,
        reject_offset=i0,
    )


def _perturbation(mask: jax.Array, r: jax.Array, pair: jax.Array, dtype) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(SMOOTH_SEED), r), pair)
    # one draw per coordinate index, so that padding does not change the valid ones
    index = jnp.arange(mask.shape[0])
    xi = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (), dtype))(index)
    return jnp.where(mask, xi, 0).astype(dtype)


def smooth_update(
    update: Callable[[Any, jax.Array, jax.Array], Any],
    init: Callable[[jax.Array], Any],
    state: SmoothState,
    value: jax.Array,
    grad: jax.Array,
    mask: jax.Array,
    *,
    rounds: int,
    samples: int,
    rho: float,
    decay: float,
    step: float,
    max_step: float,
    min_cos: float,
    min_trap: float,
    min_dim: int,
) -> SmoothState:
    """Account for ``value = f(state.x)`` and ``grad``; see the module docstring.

    ``update(inner, value, grad)`` and ``init(x)`` are the inner optimizer's; ``mask`` marks
    the valid coordinates.
    """
    x = state.x
    dtype = x.dtype
    value = jnp.asarray(value, dtype)
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    better = finite & (value < state.best_f)
    best_x = jnp.where(better, x, state.best_x)
    best_f = jnp.where(better, value, state.best_f).astype(dtype)
    safe_grad = jnp.where(finite, grad, 0).astype(dtype)
    count = state.count + 1
    phase = state.phase

    # detection, at the second evaluation (the centre is still x_0)
    g_first = jnp.where(count == 1, safe_grad, state.g_first)
    f_first = jnp.where(count == 1, value, state.f_first).astype(dtype)
    m = mask.astype(dtype)
    g0, g1 = g_first * m, safe_grad * m
    tiny = jnp.finfo(dtype).tiny
    cos = jnp.vdot(g0, g1) / (jnp.linalg.norm(g0) * jnp.linalg.norm(g1) + tiny)
    df = value - f_first
    trap = 0.5 * jnp.vdot(g0 + g1, (x - state.centre) * m)
    rounding = TRAP_ROUNDING * jnp.finfo(dtype).eps * (jnp.abs(value) + jnp.abs(f_first))
    trap_err = jnp.abs(df - trap) / (jnp.abs(df) + jnp.abs(trap) + rounding + tiny)
    n_valid = jnp.sum(mask)
    start = (
        (phase == DETECT)
        & (count == 2)
        & finite
        & (cos < min_cos)
        & (trap_err >= min_trap)
        & (n_valid >= min_dim)
    )
    stop_detect = (phase == DETECT) & (count >= 2) & ~start

    # the smoothing rounds: accumulate this sample's gradient (the first sample follows the
    # detection's second evaluation, which is no sample)
    in_round = phase == SMOOTH
    g_sum = jnp.where(in_round & finite, state.g_sum + safe_grad, state.g_sum)
    n_sum = jnp.where(in_round & finite, state.n_sum + 1, state.n_sum)
    sample = jnp.where(in_round, state.sample + 1, state.sample)
    round_done = in_round & (sample >= samples)
    g_mean = g_sum / jnp.maximum(n_sum, 1).astype(dtype)
    rms = jnp.sqrt(jnp.sum(g_mean**2 * m) / jnp.maximum(n_valid, 1))
    dc, dg = state.centre - state.centre_prev, g_mean - state.g_prev
    sy = jnp.vdot(dc, dg)
    bb = jnp.vdot(dc, dc) / jnp.where(sy > 0, sy, 1)
    alpha = jnp.where(
        state.round == 0,
        step / jnp.maximum(rms, jnp.finfo(dtype).tiny),
        jnp.where(sy > 0, bb, state.alpha),
    ).astype(dtype)
    move = alpha * g_mean * m
    move_rms = jnp.sqrt(jnp.sum(move**2) / jnp.maximum(n_valid, 1))
    move = move * jnp.minimum(1, max_step / jnp.maximum(move_rms, tiny))
    moved = (state.centre - move).astype(dtype)
    usable = round_done & (n_sum > 0) & jnp.isfinite(alpha) & jnp.all(jnp.isfinite(moved))
    centre = jnp.where(usable, moved, state.centre)
    centre_prev = jnp.where(usable, state.centre, state.centre_prev)
    g_prev = jnp.where(usable, g_mean, state.g_prev)
    alpha = jnp.where(usable, alpha, state.alpha)
    rnd = jnp.where(round_done, state.round + 1, state.round)
    sample = jnp.where(round_done, 0, sample)
    g_sum = jnp.where(round_done, jnp.zeros_like(g_sum), g_sum)
    n_sum = jnp.where(round_done, 0, n_sum)

    # (the centre is still x_0 when the phase starts)
    phase = jnp.where(start, SMOOTH, phase)
    phase = jnp.where(stop_detect, OFF, phase)
    phase = jnp.where(round_done & (rnd >= rounds), CENTRE, phase)
    handoff = state.phase == CENTRE  # this evaluation was the final centre

    # the next trial point
    r = rnd.astype(dtype)
    radius = (rho * jnp.asarray(decay, dtype) ** r).astype(dtype)
    xi = _perturbation(mask, rnd, sample // 2, dtype)
    sign = jnp.where(sample % 2 == 0, 1, -1).astype(dtype)
    sample_x = (centre + sign * radius * xi).astype(dtype)

    passing = (phase == DETECT) | (phase == OFF)

    def pass_through():
        # the inner optimizer evaluated the point it proposed (the driver may have moved it:
        # a retry after a non-finite value)
        return update(eqx.tree_at(lambda s: s.x, state.inner, x), value, grad)

    # branches, not a select: outside vmap only the taken one runs, so passing through costs
    # no pass over the inner state's matrices, and the network does not run in the phase
    inner = jax.lax.cond(
        handoff,
        lambda: init(best_x),  # a fresh start at the best point
        lambda: jax.lax.cond(passing, pass_through, lambda: state.inner),
    )
    # the phase's evaluations (and the detection's second one, whose update the frozen inner
    # optimizer never saw) count as iterations; the inner count restarts at the handoff
    extra = state.extra + ((state.phase == SMOOTH) | handoff | start).astype(jnp.int32)
    nit_offset = jnp.where(handoff, state.nit_offset + state.inner.nit, state.nit_offset)
    zero = jnp.zeros((), jnp.int32)
    fallback_offset = state.fallback_offset + jnp.where(
        handoff, getattr(state.inner, "n_fallback", zero), 0
    )
    reject_offset = state.reject_offset + jnp.where(
        handoff, getattr(state.inner, "n_reject", zero), 0
    )
    next_x = jnp.select(
        [handoff, phase == SMOOTH, phase == CENTRE], [best_x, sample_x, centre], inner.x
    ).astype(dtype)
    phase = jnp.where(handoff, OFF, phase).astype(jnp.int32)
    return SmoothState(
        inner=inner,
        x=next_x,
        phase=phase,
        count=count,
        extra=extra.astype(jnp.int32),
        nit_offset=nit_offset.astype(jnp.int32),
        g_first=g_first,
        f_first=f_first,
        centre=centre,
        centre_prev=centre_prev,
        g_sum=g_sum,
        n_sum=n_sum.astype(jnp.int32),
        g_prev=g_prev,
        alpha=alpha,
        round=rnd.astype(jnp.int32),
        sample=sample.astype(jnp.int32),
        best_x=best_x,
        best_f=best_f,
        fallback_offset=fallback_offset.astype(jnp.int32),
        reject_offset=reject_offset.astype(jnp.int32),
    )
