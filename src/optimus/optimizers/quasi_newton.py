r"""BFGS and L-BFGS with a strong-Wolfe line search, in reverse-communication form.

Both methods minimise a smooth :math:`f:\mathbb{R}^n\to\mathbb{R}` by iterating

.. math::  x_{k+1} = x_k + \alpha_k p_k, \qquad p_k = -H_k \nabla f(x_k),

where :math:`H_k \approx \nabla^2 f(x_k)^{-1}` and :math:`\alpha_k` satisfies the *strong Wolfe*
conditions (Nocedal & Wright, *Numerical Optimization*, 2nd ed., eq. 3.7), written with
:math:`\phi(\alpha) = f(x_k + \alpha p_k)`:

.. math::
    \phi(\alpha) \le \phi(0) + c_1 \alpha \phi'(0), \qquad |\phi'(\alpha)| \le c_2 |\phi'(0)|,
    \qquad 0 < c_1 < c_2 < 1.

**Inverse-Hessian updates.** With :math:`s_k = x_{k+1}-x_k`, :math:`y_k = \nabla f_{k+1} -
\nabla f_k` and :math:`\rho_k = 1/(y_k^\top s_k)`, BFGS (N&W Alg. 6.1, eq. 6.17) uses

.. math::  H_{k+1} = (I - \rho_k s_k y_k^\top) H_k (I - \rho_k y_k s_k^\top) + \rho_k s_k s_k^\top,

starting from :math:`H_0 = I` with no initial rescaling (as scipy's BFGS). L-BFGS (N&W Alg. 7.4,
7.5) never forms :math:`H`: it keeps the ``memory`` newest pairs :math:`(s_i, y_i)` in circular
buffers and applies the same recursion implicitly to :math:`H_k^0 = \gamma_k I`,
:math:`\gamma_k = s^\top y / y^\top y` of the newest pair, via the *two-loop recursion*. In both
methods a pair is skipped (the estimate is kept) when :math:`y^\top s \le 10^{-10}\|s\|\|y\|` or
anything is non-finite, so :math:`H` stays symmetric positive definite. A direction that is not
a descent direction (:math:`\nabla f^\top p \ge 0`, only possible after numerical trouble)
resets the estimate to the identity (steepest descent).

**Line search** (N&W Alg. 3.5 "bracketing" and Alg. 3.6 "zoom"), run as a state machine since
the driver hands us one :math:`(\phi, \nabla f)` per :meth:`update` call:

* *bracketing*: trial :math:`\alpha_i` with predecessor :math:`\alpha_{i-1}` (initially 0).
  If the sufficient-decrease test fails or :math:`\phi(\alpha_i)\ge\phi(\alpha_{i-1})`, zoom on
  :math:`(\alpha_{i-1}, \alpha_i)`; else if the curvature test holds, accept; else if
  :math:`\phi'(\alpha_i) \ge 0`, zoom on :math:`(\alpha_i, \alpha_{i-1})`; else extrapolate to
  the minimiser of the cubic through both points, safeguarded into
  :math:`[\alpha_i + 1.1\Delta, \alpha_i + 4\Delta]`, :math:`\Delta = \alpha_i-\alpha_{i-1}`.
* *zoom* on :math:`(\alpha_{lo}, \alpha_{hi})` (:math:`\alpha_{lo}` the best point satisfying
  sufficient decrease so far): the trial is the minimiser of the cubic Hermite interpolant
  (N&W eq. 3.59), else of the quadratic through :math:`\phi_{lo}, \phi'_{lo}, \phi_{hi}`, else
  the midpoint, clipped to the inner 80 % of the interval (so it shrinks geometrically). A
  trial failing sufficient decrease or with :math:`\phi \ge \phi_{lo}` becomes
  :math:`\alpha_{hi}`; otherwise it is accepted if the curvature test holds, else it becomes
  :math:`\alpha_{lo}` (the old :math:`\alpha_{lo}` becoming :math:`\alpha_{hi}` when
  :math:`\phi'(\alpha_j)(\alpha_{hi}-\alpha_{lo}) \ge 0`).

As in Alg. 3.5, the first trial of a line search is compared with :math:`\phi(0)` only through
the sufficient-decrease test, and that test allows a rounding slack of a few ulps of
:math:`|f(x_k)|`, so that near a minimiser (where :math:`f` no longer resolves the decrease)
steps that satisfy the curvature condition are still accepted. Non-finite trial values count as
"too large". Every trial is also tested for sufficient and strict decrease and the best such
point is remembered. When a line search spends ``max_linesearch`` evaluations (or its zoom
interval collapses to rounding level) that best point is accepted; if there is none the
estimate is reset to the identity and the search is retried once along :math:`-\nabla f`; if
that fails too, ``state.failed`` is set, ``state.x`` returns to the last accepted iterate and
later updates leave the state unchanged (so at most ``1 + 2 * max_linesearch`` evaluations are
spent on one iteration).

**Initial trial step.** BFGS follows scipy / N&W eq. 3.60:
:math:`\alpha_0 = \min(1, 1.01 \cdot 2 (f_k - f_{k-1}) / \nabla f_k^\top p_k)`, with the
fictitious :math:`f_{-1} = f_0 + \|\nabla f_0\|/2` on the first iteration (there
:math:`p_0=-\nabla f_0`, so :math:`\alpha_0 = \min(1, 1.01/\|\nabla f_0\|)`), and
:math:`\alpha_0 = 1` when the formula is not positive. L-BFGS follows L-BFGS-B: :math:`1/\|p_0\|`
on the first iteration, 1 afterwards.

``x0`` may have any shape; ``H`` (and the L-BFGS buffers) live in the flattened coordinates,
``H`` being ``(x0.size, x0.size)``. ``state.nit`` counts accepted steps, ``state.nfev``
evaluations consumed. Convergence (e.g.
:math:`\|\nabla f(x_k)\|_\infty <` tol, using ``state.g_k``) is the driver's business; an
exactly zero gradient gives :math:`p = 0` and never produces NaNs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optimus.optimizers.base import Optimizer

Array = jax.Array

__all__ = [
    "LBFGSMemory",
    "QuasiNewtonState",
    "bfgs",
    "lbfgs",
    "lbfgs_inverse_hessian",
]

# line-search phases
_INIT, _BRACKET, _ZOOM, _STOPPED = 0, 1, 2, 3

_SKIP_TOL = 1e-10  # skip the update when y's <= _SKIP_TOL * |s| |y|
_AMAX = 1e10  # largest step length the line search tries
_EXTRAP_LO, _EXTRAP_HI = 1.1, 4.0  # extrapolation range, in units of the last increment
_ZOOM_SAFE = 0.1  # zoom trials stay in the inner (1 - 2 * _ZOOM_SAFE) of the interval
_F_NOISE = 4.0  # sufficient decrease is tested up to _F_NOISE ulps of |f(x_k)|


class QuasiNewtonState(NamedTuple):
    """State of :func:`bfgs` / :func:`lbfgs` (all leaves have fixed shapes and dtypes).

    Attributes:
        x: next point the driver must evaluate (shape of ``x0``).
        nit: int32, accepted iterations.
        nfev: int32, evaluations consumed.
        failed: bool, the method cannot continue (``x`` is then the last accepted iterate).
        phase: int32, 0 = waiting for f(x0), 1 = bracketing, 2 = zoom, 3 = stopped.
        x_k, f_k, g_k: last accepted iterate, its value and gradient (``g_k`` is zero before
            the first evaluation).
        f_prev: value at the previous iterate (for the initial-step heuristic).
        p: current search direction; ``dphi0 = g_k . p``.
        alpha: step length of the trial ``x = x_k + alpha p``.
        a_lo, f_lo, d_lo, a_hi, f_hi, d_hi: line-search bracket ``(alpha, phi, phi')``; in the
            bracketing phase ``lo`` is the previous trial.
        ls_evals: int32, evaluations spent in the current line search.
        retried: bool, the current line search is the steepest-descent retry.
        best_f, best_x, best_g: best trial so far that satisfies sufficient and strict
            decrease (``best_f == f_k`` means none).
        mem: inverse-Hessian information (dense ``H`` or :class:`LBFGSMemory`).
    """

    x: Array
    nit: Array
    nfev: Array
    failed: Array
    phase: Array
    x_k: Array
    f_k: Array
    g_k: Array
    f_prev: Array
    p: Array
    dphi0: Array
    alpha: Array
    a_lo: Array
    f_lo: Array
    d_lo: Array
    a_hi: Array
    f_hi: Array
    d_hi: Array
    ls_evals: Array
    retried: Array
    best_f: Array
    best_x: Array
    best_g: Array
    mem: Any


class LBFGSMemory(NamedTuple):
    """Circular buffers of the L-BFGS pairs; slot ``(head - 1) % m`` is the newest."""

    S: Array  # (m, n)
    Y: Array  # (m, n)
    rho: Array  # (m,) 1 / y's
    head: Array  # int32, slot the next pair is written to
    count: Array  # int32, number of valid pairs (<= m)


class _Method(NamedTuple):
    init_mem: Callable[[int, Any], Any]
    reset_mem: Callable[[Any], Any]
    update_mem: Callable[[Any, Array, Array], Any]
    direction: Callable[[Any, Array], Array]  # flat g -> flat p
    # (f_new, f_old, dphi0, pnorm, first, retry) -> first trial step of a line search
    initial_step: Callable[[Array, Array, Array, Array, Array, Array], Array]


# ----------------------------------------------------------------------------- helpers


def _select(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def _pair_ok(s: Array, y: Array) -> tuple[Array, Array]:
    """Curvature test for an update pair; returns (ok, y's)."""
    ys = jnp.vdot(y, s)
    tol = _SKIP_TOL * jnp.linalg.norm(s) * jnp.linalg.norm(y)
    ok = jnp.isfinite(ys) & (ys > tol) & jnp.all(jnp.isfinite(s)) & jnp.all(jnp.isfinite(y))
    return ok, ys


def _cubic_min(a0, f0, d0, a1, f1, d1):
    """Minimiser of the cubic matching (f, f') at a0 and a1 (N&W eq. 3.59); NaN if none."""
    d1_ = d0 + d1 - 3.0 * (f0 - f1) / (a0 - a1)
    disc = d1_ * d1_ - d0 * d1
    d2 = jnp.sign(a1 - a0) * jnp.sqrt(jnp.where(disc >= 0, disc, 0.0))
    denom = d1 - d0 + 2.0 * d2
    t = a1 - (a1 - a0) * (d1 + d2 - d1_) / jnp.where(denom != 0, denom, 1.0)
    return jnp.where((disc >= 0) & (denom != 0) & jnp.isfinite(t), t, jnp.nan)


def _quad_min(a0, f0, d0, a1, f1):
    """Minimiser of the quadratic matching f, f' at a0 and f at a1; NaN if not convex."""
    w = a1 - a0
    curv = (f1 - f0 - d0 * w) / (w * w)
    t = a0 - d0 / (2.0 * jnp.where(curv > 0, curv, 1.0))
    return jnp.where((curv > 0) & jnp.isfinite(t), t, jnp.nan)


def _zoom_trial(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi):
    lo = jnp.minimum(a_lo, a_hi)
    hi = jnp.maximum(a_lo, a_hi)
    w = hi - lo
    c = _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi)
    q = _quad_min(a_lo, f_lo, d_lo, a_hi, f_hi)

    def inside(t):
        return jnp.isfinite(t) & (t > lo) & (t < hi)

    t = jnp.where(inside(c), c, jnp.where(inside(q), q, 0.5 * (lo + hi)))
    return jnp.clip(t, lo + _ZOOM_SAFE * w, hi - _ZOOM_SAFE * w)


def _extrapolate(a0, f0, d0, a1, f1, d1):
    delta = a1 - a0
    lo = a1 + _EXTRAP_LO * delta
    hi = a1 + _EXTRAP_HI * delta
    c = _cubic_min(a0, f0, d0, a1, f1, d1)
    t = jnp.where(jnp.isfinite(c) & (c > a1), jnp.clip(c, lo, hi), hi)
    return jnp.minimum(t, _AMAX)


# ----------------------------------------------------------------------------- driver core


def _make(method: _Method, *, c1: float, c2: float, max_linesearch: int, unit_box: bool):
    if not 0.0 < c1 < c2 < 1.0:
        raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
    if max_linesearch < 1:
        raise ValueError("max_linesearch must be >= 1")

    def init(x0: Array, key: Array | None = None) -> QuasiNewtonState:
        del key
        x0 = jnp.asarray(x0)
        if not jnp.issubdtype(x0.dtype, jnp.floating):
            x0 = x0.astype(jnp.result_type(float))
        dt = x0.dtype
        n = x0.size
        zero = jnp.zeros((), dt)
        zeros = jnp.zeros_like(x0)
        i0 = jnp.zeros((), jnp.int32)
        return QuasiNewtonState(
            x=x0,
            nit=i0,
            nfev=i0,
            failed=jnp.zeros((), bool),
            phase=jnp.full((), _INIT, jnp.int32),
            x_k=x0,
            f_k=zero,
            g_k=zeros,
            f_prev=zero,
            p=zeros,
            dphi0=zero,
            alpha=zero,
            a_lo=zero,
            f_lo=zero,
            d_lo=zero,
            a_hi=zero,
            f_hi=zero,
            d_hi=zero,
            ls_evals=i0,
            retried=jnp.zeros((), bool),
            best_f=zero,
            best_x=x0,
            best_g=zeros,
            mem=method.init_mem(n, dt),
        )

    def update(state: QuasiNewtonState, value: Array, grad: Array) -> QuasiNewtonState:
        dt = state.x_k.dtype
        shape = state.x_k.shape
        f = jnp.asarray(value, dt).reshape(())
        g = jnp.asarray(grad, dt).reshape(shape)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        inf = jnp.asarray(jnp.inf, dt)

        phase = state.phase
        is_init = phase == _INIT
        in_ls = (phase == _BRACKET) | (phase == _ZOOM)
        bracketing = phase == _BRACKET

        # ---- the trial point x_k + alpha p just evaluated
        a = state.alpha
        phi = jnp.where(finite, f, inf)
        dphi = jnp.where(finite, jnp.vdot(g.ravel(), state.p.ravel()), 0.0)
        phi0, dphi0 = state.f_k, state.dphi0
        # sufficient decrease, up to a few ulps of rounding in f (False for non-finite trials)
        f_noise = _F_NOISE * jnp.finfo(dt).eps * jnp.abs(phi0)
        armijo = phi <= phi0 + c1 * a * dphi0 + f_noise
        # N&W Alg. 3.5 compares with the previous trial only from the second trial on, so a
        # first trial with phi == phi(0) (rounding, near a minimiser) may still be accepted.
        first_trial = bracketing & (state.a_lo == 0)
        high = ~armijo | ((phi >= state.f_lo) & ~first_trial)
        curv = jnp.abs(dphi) <= -c2 * dphi0
        flip = jnp.where(bracketing, dphi >= 0, dphi * (state.a_hi - state.a_lo) >= 0)
        flip = ~high & ~curv & flip
        extrapolating = bracketing & ~high & ~curv & ~flip
        accept = ~high & (curv | (extrapolating & (a >= _AMAX)))

        # new bracket (N&W Alg. 3.5 / 3.6 in one table)
        cur = (a, phi, dphi)
        old_lo = (state.a_lo, state.f_lo, state.d_lo)
        old_hi = (state.a_hi, state.f_hi, state.d_hi)
        new_lo = _select(high, old_lo, cur)
        new_hi = _select(high, cur, _select(flip, old_lo, old_hi))
        new_phase = jnp.where(extrapolating, _BRACKET, _ZOOM).astype(jnp.int32)
        next_alpha = jnp.where(
            extrapolating, _extrapolate(*old_lo, *cur), _zoom_trial(*new_lo, *new_hi)
        ).astype(dt)

        # best point with sufficient and strict decrease
        improve = armijo & (phi < state.best_f)
        best_f = jnp.where(improve, phi, state.best_f)
        best_x = jnp.where(improve, state.x, state.best_x)
        best_g = jnp.where(improve, g, state.best_g)
        has_best = best_f < phi0

        ls_evals = state.ls_evals + 1
        width = jnp.abs(new_hi[0] - new_lo[0])
        xtol = 10.0 * jnp.finfo(dt).eps
        collapsed = ~extrapolating & (width <= xtol * jnp.maximum(new_lo[0], new_hi[0]))
        exhausted = ~accept & ((ls_evals >= max_linesearch) | collapsed)

        acc_trial = in_ls & accept
        acc_best = in_ls & exhausted & has_best
        restart = in_ls & exhausted & ~has_best & ~state.retried
        fail = (in_ls & exhausted & ~has_best & state.retried) | (is_init & ~finite)
        cont = in_ls & ~accept & ~exhausted
        accepted = acc_trial | acc_best
        take_new = (is_init & finite) | accepted
        start = take_new | restart

        # ---- new iterate and inverse-Hessian information
        x_n = jnp.where(take_new, jnp.where(acc_best, best_x, state.x), state.x_k)
        if unit_box:
            # bounds (optimus.minimize): the objective is f(clip(x)), so an accepted point
            # past the box has the value and gradient of its projection; continue from the
            # projection, where the slope the gradient reports is real, not from a flat
            # region outside the box
            x_n = jnp.clip(x_n, -1, 1).astype(dt)
        f_n = jnp.where(take_new, jnp.where(acc_best, best_f, f), state.f_k)
        g_n = jnp.where(take_new, jnp.where(acc_best, best_g, g), state.g_k)
        s = (x_n - state.x_k).ravel()
        y = (g_n - state.g_k).ravel()
        mem = _select(accepted, method.update_mem(state.mem, s, y), state.mem)
        mem = _select(restart, method.reset_mem(mem), mem)

        gflat = g_n.ravel()
        p = method.direction(mem, gflat)
        d0 = jnp.vdot(gflat, p)
        bad = ~(d0 < 0) | ~jnp.all(jnp.isfinite(p))
        mem = _select(start & bad, method.reset_mem(mem), mem)
        p = jnp.where(bad, -gflat, p).reshape(shape)
        d0 = jnp.where(bad, -jnp.vdot(gflat, gflat), d0)

        fresh = is_init | restart
        gnorm = jnp.linalg.norm(gflat)
        f_prev = jnp.where(fresh, f_n + 0.5 * gnorm, state.f_k)
        a0 = method.initial_step(f_n, f_prev, d0, jnp.linalg.norm(p), is_init, restart)
        a0 = jnp.clip(jnp.where(jnp.isfinite(a0) & (a0 > 0), a0, 1.0), 0.0, _AMAX).astype(dt)

        zero = jnp.zeros((), dt)
        started = state._replace(
            x=x_n + a0 * p,
            phase=jnp.full((), _BRACKET, jnp.int32),
            x_k=x_n,
            f_k=f_n,
            g_k=g_n,
            f_prev=f_prev,
            p=p,
            dphi0=d0,
            alpha=a0,
            a_lo=zero,
            f_lo=f_n,
            d_lo=d0,
            a_hi=zero,
            f_hi=f_n,
            d_hi=d0,
            ls_evals=jnp.zeros((), jnp.int32),
            retried=restart,
            best_f=f_n,
            best_x=x_n,
            best_g=g_n,
            mem=mem,
        )
        continued = state._replace(
            x=state.x_k + next_alpha * state.p,
            phase=new_phase,
            alpha=next_alpha,
            a_lo=new_lo[0],
            f_lo=new_lo[1],
            d_lo=new_lo[2],
            a_hi=new_hi[0],
            f_hi=new_hi[1],
            d_hi=new_hi[2],
            ls_evals=ls_evals,
            best_f=best_f,
            best_x=best_x,
            best_g=best_g,
        )
        failed = state._replace(
            x=state.x_k,
            failed=jnp.ones((), bool),
            phase=jnp.full((), _STOPPED, jnp.int32),
        )
        out = _select(start, started, _select(cont, continued, _select(fail, failed, state)))
        live = is_init | in_ls
        return out._replace(
            nit=state.nit + accepted.astype(jnp.int32),
            nfev=state.nfev + live.astype(jnp.int32),
        )

    return init, update


# ----------------------------------------------------------------------------- BFGS


def _bfgs_update(H: Array, s: Array, y: Array) -> Array:
    """Inverse BFGS update (N&W eq. 6.17), or H itself when the pair fails the skip rule.

    Expanded, H+ = H - rho (s Hy' + Hy s') + (rho^2 y'Hy + rho) s s'. The symmetric rank-2 part
    is written as a difference of squares, s Hy' + Hy s' = (u u' - v v') / 2 with
    u = a s + Hy / a, v = a s - Hy / a and a = sqrt(|Hy| / |s|) (balanced, so no extra
    cancellation), so that every term is an outer product of a vector with itself and
    H+ is exactly symmetric whatever order the compiler evaluates entries in.
    """
    ok, ys = _pair_ok(s, y)
    rho = 1.0 / jnp.where(ok, ys, 1.0)
    Hy = H @ y
    yHy = jnp.vdot(y, Hy)
    ns, nh = jnp.linalg.norm(s), jnp.linalg.norm(Hy)
    a = jnp.sqrt(jnp.where((ns > 0) & (nh > 0), nh / jnp.where(ns > 0, ns, 1.0), 1.0))
    u = a * s + Hy / a
    v = a * s - Hy / a
    Hn = (
        H
        + (rho * rho * yHy + rho) * jnp.outer(s, s)
        - (0.5 * rho) * jnp.outer(u, u)
        + (0.5 * rho) * jnp.outer(v, v)
    )
    ok = ok & jnp.all(jnp.isfinite(Hn))
    return jnp.where(ok, Hn, H)


def bfgs(
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_linesearch: int = 20,
    init_step: float | None = None,
    unit_box: bool = False,
) -> Optimizer:
    r"""Dense BFGS (N&W Alg. 6.1) with a strong-Wolfe line search.

    Args:
        c1, c2: Wolfe constants, ``0 < c1 < c2 < 1``.
        max_linesearch: evaluations per line search before falling back (see module doc).
        init_step: ``None`` for the scipy-like initial trial step (N&W eq. 3.60); a positive
            float to start every line search from that step length instead.
        unit_box: clip every accepted iterate into :math:`[-1, 1]^n` (set by
            :func:`optimus.minimize` with ``bounds``, whose objective is then
            :math:`f(\mathrm{clip}(c + h z))` in box-normalised coordinates :math:`z`).

    ``hess_inv(state)`` returns the dense inverse-Hessian estimate ``H`` (``(n, n)``).
    """
    if init_step is not None and not init_step > 0:
        raise ValueError("init_step must be positive or None")

    def init_mem(n, dt):
        return jnp.eye(n, dtype=dt)

    def reset_mem(H):
        return jnp.eye(H.shape[0], dtype=H.dtype)

    def direction(H, g):
        return -(H @ g)

    def initial_step(f_new, f_old, dphi0, pnorm, first, retry):
        del pnorm, first, retry
        if init_step is not None:
            return jnp.asarray(init_step, f_new.dtype)
        a = 1.01 * 2.0 * (f_new - f_old) / jnp.where(dphi0 != 0, dphi0, 1.0)
        a = jnp.where(dphi0 != 0, a, 1.0)
        return jnp.where(a > 0, jnp.minimum(1.0, a), 1.0)

    method = _Method(init_mem, reset_mem, _bfgs_update, direction, initial_step)
    init, update = _make(
        method, c1=c1, c2=c2, max_linesearch=max_linesearch, unit_box=bool(unit_box)
    )
    return Optimizer(
        name="bfgs",
        init=init,
        update=update,
        hess_inv=lambda s: s.mem,
        uses_line_search=True,
    )


# ----------------------------------------------------------------------------- L-BFGS


def _lbfgs_direction(mem: LBFGSMemory, g: Array) -> Array:
    """Two-loop recursion (N&W Alg. 7.4): returns -H g."""
    m = mem.S.shape[0]
    order = (mem.head - 1 - jnp.arange(m)) % m  # newest first
    valid = jnp.arange(m) < mem.count

    def first(q, i):
        j = order[i]
        al = jnp.where(valid[i], mem.rho[j] * jnp.vdot(mem.S[j], q), 0.0)
        return q - al * mem.Y[j], al

    q, alphas = jax.lax.scan(first, g, jnp.arange(m))

    newest = order[0]
    yy = jnp.vdot(mem.Y[newest], mem.Y[newest])
    sy = jnp.vdot(mem.S[newest], mem.Y[newest])
    gamma = jnp.where((mem.count > 0) & (yy > 0), sy / jnp.where(yy > 0, yy, 1.0), 1.0)
    r = gamma * q

    def second(r, i):
        j = order[i]
        beta = mem.rho[j] * jnp.vdot(mem.Y[j], r)
        return r + jnp.where(valid[i], alphas[i] - beta, 0.0) * mem.S[j], None

    r, _ = jax.lax.scan(second, r, jnp.arange(m - 1, -1, -1))
    return -r


def _lbfgs_update(mem: LBFGSMemory, s: Array, y: Array) -> LBFGSMemory:
    ok, ys = _pair_ok(s, y)
    m = mem.S.shape[0]
    new = LBFGSMemory(
        S=mem.S.at[mem.head].set(s),
        Y=mem.Y.at[mem.head].set(y),
        rho=mem.rho.at[mem.head].set(1.0 / jnp.where(ok, ys, 1.0)),
        head=(mem.head + 1) % m,
        count=jnp.minimum(mem.count + 1, m),
    )
    return _select(ok, new, mem)


def lbfgs(
    *,
    memory: int = 10,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_linesearch: int = 20,
    unit_box: bool = False,
) -> Optimizer:
    """Limited-memory BFGS (N&W Alg. 7.5) with a strong-Wolfe line search.

    Args:
        memory: number of ``(s, y)`` pairs kept (fixed-size circular buffers).
        c1, c2: Wolfe constants, ``0 < c1 < c2 < 1``.
        max_linesearch: evaluations per line search before falling back (see module doc).
        unit_box: clip every accepted iterate into :math:`[-1, 1]^n` (as for :func:`bfgs`).

    ``hess_inv`` is ``None``; :func:`lbfgs_inverse_hessian` builds the dense matrix if wanted.
    """
    if memory < 1:
        raise ValueError("memory must be >= 1")

    def init_mem(n, dt):
        return LBFGSMemory(
            S=jnp.zeros((memory, n), dt),
            Y=jnp.zeros((memory, n), dt),
            rho=jnp.zeros((memory,), dt),
            head=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
        )

    def reset_mem(mem):
        return mem._replace(head=jnp.zeros_like(mem.head), count=jnp.zeros_like(mem.count))

    def initial_step(f_new, f_old, dphi0, pnorm, first, retry):
        del f_new, f_old, dphi0
        inv = 1.0 / jnp.where(pnorm > 0, pnorm, 1.0)
        return jnp.where(first, inv, jnp.where(retry, jnp.minimum(1.0, inv), 1.0))

    method = _Method(init_mem, reset_mem, _lbfgs_update, _lbfgs_direction, initial_step)
    init, update = _make(
        method, c1=c1, c2=c2, max_linesearch=max_linesearch, unit_box=bool(unit_box)
    )
    return Optimizer(name="lbfgs", init=init, update=update, hess_inv=None, uses_line_search=True)


def lbfgs_inverse_hessian(state: QuasiNewtonState) -> Array:
    """Dense ``(n, n)`` inverse-Hessian estimate implied by an :func:`lbfgs` state."""
    n = state.x_k.size
    eye = jnp.eye(n, dtype=state.x_k.dtype)
    return -jax.vmap(lambda e: _lbfgs_direction(state.mem, e))(eye).T
