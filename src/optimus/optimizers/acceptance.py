r"""Step acceptance with backtracking, a layer around any one-evaluation-per-step optimizer.

The paper's Optimus moves to every point the network proposes. Near a minimum with
rapidly changing curvature (Griewank's ripples, the valley of Rosenbrock) a secant-based
step can overshoot into a region with a much larger objective, and the optimizer then
loses many evaluations climbing back. This layer adds the classical remedy while leaving
the step itself to the network.

Let :math:`x_b` be the last *accepted* point (the best one under this monotone rule) and
:math:`f_b = f(x_b)`. After evaluating a
trial point :math:`x` with value :math:`f` and gradient :math:`g`:

* **accept** when :math:`f` and :math:`g` are finite and :math:`f \le f_b`, or during the
  first ``warmup`` accepted steps (the first learned step is a probe whose job is to
  produce a secant pair, tiny or of length ``NetConfig.probe``, so it must not be judged by
  its objective; a long probe that lands higher is still the point the next step starts
  from, and :func:`optimus.minimize` returns the best point seen either way): the inner
  optimizer is updated with :math:`(f, g)` and proposes the next trial point;
  :math:`x_b \leftarrow x`;
* **reject** otherwise (an increase, or a non-finite value or gradient): the inner state
  is left untouched, except that its next trial point is pulled back towards the best
  point, :math:`x \leftarrow x_b + \beta\,(x - x_b)` with :math:`\beta = 1/2`. The
  following evaluation therefore retries the same direction with half the step, and the
  secant pair the inner optimizer sees next, :math:`(x - x_b,\ g(x) - g(x_b))`, is exact.

**Interpolating backtracking** (optional, ``interpolate=True``; ``NetConfig.backtrack =
"interp"``). Instead of the fixed :math:`\beta = 1/2`, the pull-back factor is the minimiser
of the quadratic through :math:`f_b`, the slope :math:`g_b^\top p` and :math:`f` along
:math:`p = x - x_b` (the classical safeguarded backtracking of Nocedal & Wright, §3.5):

.. math:: \beta = \operatorname{clip}\Bigl(\frac{-g_b^\top p}{2\,(f - f_b - g_b^\top p)},
   \ 0.1,\ 0.5\Bigr),

exact in one step on a quadratic along the line; :math:`\beta = 1/2` when :math:`p` is not a
descent direction or :math:`f` is not finite. It needs the gradient :math:`g_b` at the best
point, which the state keeps either way. On in ``optimus-humanoid`` only. Measured with the
function-trained shipped weights switched to it (``scripts/experiment_acceptance.py --set
backtrack=interp`` → ``bench_results/backtrack.md``): on the physics first windows it lowers
the median final loss (4.20 vs 4.57 for optimus, 4.27 vs 4.36 for optimus-noprecond;
rejections 32 vs 39 of 50), still far above Adam's 2.55; on the test functions it is worse
for optimus (mean log10 −4.86 vs −5.55) and equal for optimus-noprecond (−3.97).

**Step memory** (optional, ``memory=True``; ``NetConfig.step_memory``; ours). Plain
backtracking forgets: when the inner optimizer keeps proposing steps :math:`2^k` times too
long, every accepted step costs :math:`k` rejections. With memory the layer keeps a trust
factor :math:`c \in (0, 1]` (initially 1): a rejection halves it (the pull-back above is
exactly :math:`c \leftarrow c/2`), an acceptance multiplies it by ``GROW`` = 1.5 up to 1
(doubling would undo every halving at once), and the inner
optimizer's next proposal :math:`x'` is shortened to :math:`x_b + c\,(x' - x_b)` before it is
evaluated. The secant pair the inner optimizer sees is still exact. Off in every shipped
model. Measured with the shipped weights switched to it (``scripts/experiment_acceptance.py``
→ ``bench_results/step_memory.md``): no change on the physics windows (median final loss
4.57 vs 4.57, rejections 34 vs 39 of 50); on the test functions mean log10 −5.66 vs −5.55, a
difference within the noise of 5 seeds (the quadratic and Rosenbrock at n = 10 and
Griewank at n = 100 swing it; the run before the float32 fix of the functions gave −5.41
vs −5.87); a network meta-trained with it has not been tried.

**Non-monotone acceptance** (optional, ``window=M > 1``; ``NetConfig.accept_window``; the
rule of Grippo, Lampariello & Lucidi, 1986). The trial point is judged against the largest
of the last :math:`M` accepted values instead of the last one,

.. math:: \text{accept} \iff f \le \max_{0 \le j < M} f_{k-j},

so an accepted step may go uphill as long as it stays below the recent worst; :math:`x_b`
is then the last accepted point (not necessarily the best), and backtracking pulls back to
it as above. ``window = 1`` is the monotone rule exactly. The best point seen is what
:func:`optimus.minimize` returns either way.

**Restarts** (optional, ``restart=`` a function giving the restart point;
``NetConfig.restart``; ours). Once a local method has converged, backtracking stalls at
floating-point resolution: the pulled-back trial point lies within ``STALL_ULPS`` = 4 ulps
of :math:`x_b` in every coordinate, is rejected again, and every remaining evaluation of a
fixed budget is spent on the same few points (on Rastrigin at n = 10 from about evaluation
20 of 100). At such a stall the layer instead proposes a restart point (for the learned
optimizers :math:`x_h + r\,\xi`, :math:`\xi \in \{-1, 1\}^n` pseudo-random from a counter,
:math:`r` = ``NetConfig.restart`` box half-widths) around the *home* point :math:`x_h`, the
best accepted point since the start, and accepts it whatever its value; the inner optimizer
keeps its state (its curvature estimates) and descends from there, and the window then
judges against the restart's value. The best point seen is still what
:func:`optimus.minimize` returns, so a restart can lose only what the stalled
evaluations might still have found: rounding sometimes lets a stalled run slip into a
lower basin, and a restart takes that chance away. Meant for fixed budgets: a run that
:func:`optimus.minimize`'s ``gtol`` ends never restarts, but in float32 rounding often keeps
the gradient above the default ``gtol`` at a local minimum, so ``minimize`` takes
``options={"restart": 0.0}`` to keep a search local.

*Patience* (optional, ``patience=P``; ``NetConfig.restart_patience``; off in every shipped
model). Some runs never shrink to a few ulps: the inner optimizer keeps proposing new
steps that are rejected or accepted at the same value (Optimus on Rastrigin at n = 30
from evaluation ~15 of 100). With patience the layer also restarts at a rejected trial
point once ``P`` evaluations in a row brought no accepted value below the previous one by
more than ``STALL_REL_ULPS`` = 16 ulps, relative. On 20 validation seeds
(``bench_results/restart/val-patience.md``) P = 10 / 20 moved the benchmark metric from
−8.214 to −8.227 / −8.255 (gains at n = 2, n ≥ 30 within 0.01; P = 10 loses Griewank at
n = 10) and P = 5 to −7.014 (restarts that cut Griewank's slow phase short).

Every evaluation, accepted or not, costs one evaluation of the budget, so comparisons at
equal numbers of evaluations stay fair. The objective values of the accepted points never
increase after the warm-up (with ``window = 1``). ``n_reject`` counts the rejected trial
points.

The layer is part of a learned optimizer's definition (``NetConfig.monotone``): a network
meta-trained with it is run with it, since it learns to propose steps for this rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.optimizers.base import WrapperState

BACKTRACK = 0.5  # beta: a rejected trial point is pulled half-way back to the best point
WARMUP = 2  # accepted steps that are never judged (the initial point and the first probe)
INTERP_MIN = 0.1  # interpolating backtracking: smallest pull-back factor
GROW = 1.5  # step memory: an acceptance multiplies the trust factor by this (capped at 1)
STALL_ULPS = 4  # restarts: a pulled-back trial point this close to the best point has stalled
STALL_REL_ULPS = 16  # restarts with patience: smallest relative decrease that counts, in ulps


class AcceptState(WrapperState):
    """State of the acceptance layer: the inner optimizer's state plus the best point."""

    inner: Any  # state of the wrapped optimizer (its ``x`` is the next trial point)
    x_best: jax.Array  # last accepted point (the best one with window = 1)
    f_best: jax.Array  # its value
    g_best: jax.Array  # gradient at x_best (interpolating backtracking)
    n_reject: jax.Array
    trust: jax.Array  # step-memory factor c in (0, 1]; stays 1 without memory
    f_window: jax.Array  # (M,) last M accepted values, newest first (-inf: none yet)
    # restarts: the best accepted point since the start and its value, where the next
    # restart starts from (None without restarts)
    x_home: jax.Array | None = None
    f_home: jax.Array | None = None
    # restarts with patience: evaluations since an accepted value last decreased by more
    # than STALL_REL_ULPS ulps (relative)
    n_idle: jax.Array | None = None

    @property
    def x(self) -> jax.Array:
        return self.inner.x

    @property
    def nit(self) -> jax.Array:
        return self.inner.nit


def accept_init(inner: Any, window: int = 1, restart: bool = False) -> AcceptState:
    """Wrap the initial state of the inner optimizer (whose ``x`` is the starting point);
    ``window``: the number of accepted values a trial point is judged against (module
    docstring; 1 = monotone); ``restart``: keep the best point for restarts."""
    if int(window) < 1:
        raise ValueError(f"acceptance window must be >= 1, got {window}")
    x = inner.x
    return AcceptState(
        inner=inner,
        x_best=x,
        f_best=jnp.asarray(jnp.inf, x.dtype),
        g_best=jnp.zeros_like(x),
        n_reject=jnp.zeros((), jnp.int32),
        trust=jnp.ones((), x.dtype),
        f_window=jnp.full((int(window),), -jnp.inf, x.dtype),
        x_home=x if restart else None,
        f_home=jnp.asarray(jnp.inf, x.dtype) if restart else None,
        n_idle=jnp.zeros((), jnp.int32) if restart else None,
    )


def accept_update(
    update: Callable[[Any, jax.Array, jax.Array], Any],
    state: AcceptState,
    value: jax.Array,
    grad: jax.Array,
    *,
    steps_taken: jax.Array | None = None,
    memory: bool = False,
    interpolate: bool = False,
    restart: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
    patience: int = 0,
) -> AcceptState:
    """Judge the trial point ``state.x`` given ``value = f(state.x)`` and ``grad``.

    ``update(inner, value, grad)`` is the inner optimizer's update. ``steps_taken`` is the
    number of accepted steps so far (default ``state.inner.t``), used for the warm-up.
    ``memory`` turns on the step memory, ``interpolate`` the interpolating backtracking
    (module docstring). ``restart(inner, x_home, count)``, given with a state made by
    ``accept_init(..., restart=True)``, returns the restart point when backtracking has
    stalled (``count`` differs between calls, for pseudo-random choices; module docstring);
    with ``patience > 0`` also when no accepted value has decreased by more than
    ``STALL_REL_ULPS`` ulps (relative) for ``patience`` evaluations and the trial point is
    rejected.
    """
    x = state.x
    dtype = x.dtype
    value = jnp.asarray(value, dtype)
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    t = state.inner.t if steps_taken is None else steps_taken
    accept = finite & ((value <= jnp.max(state.f_window)) | (t < WARMUP))
    # The inner update runs on sanitised inputs either way (its result is discarded on
    # rejection), so that no NaN is ever computed inside a jitted or differentiated loop.
    safe_value = jnp.where(finite, value, 0).astype(dtype)
    safe_grad = jnp.where(finite, grad, 0).astype(grad.dtype)
    accepted = update(state.inner, safe_value, safe_grad)
    beta = jnp.asarray(BACKTRACK, dtype)
    if interpolate:
        p = x - state.x_best
        slope = jnp.vdot(state.g_best, p).astype(dtype)
        curv = 2 * (safe_value - state.f_best - slope)
        ok = finite & (slope < 0) & (curv > 0) & jnp.isfinite(state.f_best)
        quad = -slope / jnp.where(ok, curv, 1)
        beta = jnp.where(ok, jnp.clip(quad, INTERP_MIN, BACKTRACK), beta).astype(dtype)
    pulled = (state.x_best + beta * (x - state.x_best)).astype(dtype)
    n_idle = state.n_idle
    if restart is not None:
        if state.x_home is None:
            raise ValueError("restarts need a state made by accept_init(..., restart=True)")
        # the pull-back is down to rounding: within a few ulps of the best point
        eps = jnp.finfo(dtype).eps
        near = jnp.abs(pulled - state.x_best) <= STALL_ULPS * eps * jnp.abs(state.x_best)
        stall = ~accept & jnp.all(near)
        if patience > 0:
            # progress: an accepted value clearly below the last accepted one (the first
            # point, below f_best = inf, and a restart point, accepted whatever its value,
            # count as progress)
            f_b = jnp.where(jnp.isfinite(state.f_best), state.f_best, 0)
            tol = STALL_REL_ULPS * eps * jnp.abs(f_b)
            forced = jnp.any(jnp.isposinf(state.f_window))
            progress = accept & ((value < state.f_best - tol) | forced)
            n_idle = jnp.where(progress, 0, n_idle + 1)
            stall = stall | (~accept & (n_idle >= patience))
            n_idle = jnp.where(stall, 0, n_idle).astype(jnp.int32)
        pulled = jnp.where(stall, restart(state.inner, state.x_home, state.n_reject), pulled)
        pulled = pulled.astype(dtype)
    rejected = eqx.tree_at(lambda s: s.x, state.inner, pulled)
    trust = state.trust
    if memory:
        grown = jnp.minimum(GROW * trust, 1).astype(trust.dtype)
        trust = jnp.where(accept, grown, beta * trust).astype(trust.dtype)
        shortened = x + trust * (accepted.x - x)  # x is the new best point when accepted
        accepted = eqx.tree_at(lambda s: s.x, accepted, shortened.astype(x.dtype))
    inner = jax.tree.map(lambda a, r: jnp.where(accept, a, r), accepted, rejected)
    rolled = jnp.roll(state.f_window, 1).at[0].set(value)
    # +inf (a restart) accepts the next point whatever its value, then the window restarts
    rolled = jnp.where(jnp.isposinf(rolled), value, rolled)
    f_window = jnp.where(accept, rolled, state.f_window)
    x_home, f_home = state.x_home, state.f_home
    if restart is not None:
        f_window = jnp.where(stall, jnp.inf, f_window)
    if x_home is not None:
        better = accept & (value < f_home)
        x_home = jnp.where(better, x, x_home)
        f_home = jnp.where(better, value, f_home).astype(dtype)
    return AcceptState(
        inner=inner,
        x_best=jnp.where(accept, x, state.x_best),
        f_best=jnp.where(accept, value, state.f_best),
        g_best=jnp.where(accept, safe_grad.astype(dtype), state.g_best),
        n_reject=state.n_reject + (~accept).astype(jnp.int32),
        trust=trust,
        f_window=f_window.astype(dtype),
        x_home=x_home,
        f_home=f_home,
        n_idle=n_idle,
    )
