r"""Per-coordinate accumulators and input features of the learned optimizers.

Accumulators (all start at zero; updated with :math:`g_t` *before* features are built):

.. math::
    m^{(k)}_t = \beta_k m^{(k)}_{t-1} + (1-\beta_k) g_t, \qquad
    v^{(k)}_t = \beta_k v^{(k)}_{t-1} + (1-\beta_k) g_t^2, \qquad \beta \in \{0.9, 0.99, 0.999\}

(the spec's second moment :math:`r` at 0.999 is :math:`v^{(3)}`). Per-coordinate channels, in
the Adafactor-MLP style of Metz et al. (2022), with
:math:`\rho(v) = (v + \epsilon)^{-1/2}`:

``g, m(3), r, m·ρ(r) (3), ρ(r), g·ρ(v) (3), v (3), ρ(v) (3), m·ρ(v) (3)`` (21 channels)

plus BFGS-like secant channels (ours): the last step :math:`s = x_t - x_{t-1}`, the gradient
change :math:`y = g_t - g_{t-1}`, the preconditioned change :math:`B y`, the displacement
:math:`x_t - x_0` (translation invariant: the raw position is never fed), and the L-BFGS
direction :math:`q = H_t g_t` computed by the two-loop recursion from the last
``LBFGS_MEMORY`` secant pairs of the learned optimizer's own trajectory (pairs with
:math:`s^\top y \le 0` are skipped). The network can thus follow a quasi-Newton direction
where that pays and depart from it where it does not. Every channel is
divided by its root-mean-square over the valid coordinates, so features are invariant to the
scale of the objective (:math:`f \to c f`) and to the number of coordinates.

:math:`\epsilon` is relative (``1e-12 × mean(v)``), which keeps the features exactly invariant
under :math:`f \to c f`.

Global (per-problem) features, broadcast to every token: the time features
:math:`\tanh(t/\tau - 1)` for 11 horizons :math:`\tau`, the relative change of :math:`f`, the
log ratio :math:`|f_t| / |f_0|`, cosines between :math:`g_t` and :math:`s`, between
:math:`g_t` and :math:`g_{t-1}`, and between :math:`s` and :math:`y`, and (in coordinate
units) the log RMS length of the last step, of the displacement from :math:`x_0`, and of the
Barzilai–Borwein step :math:`\|g\| \, |s^\top y| / \|y\|^2` and of the L-BFGS step :math:`q`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

BETAS = (0.9, 0.99, 0.999)
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
LBFGS_MEMORY = 5
# dense BFGS scaling (bfgs_inverse_update): H is scaled down only when a pair shows it more
# than 1 / SHRINK_BELOW times too large
SHRINK_BELOW = 0.01
N_COORD_FEATURES = 26
N_GLOBAL_FEATURES = len(TIMESCALES) + 10


class Accumulators(eqx.Module):
    """Momentum and second-moment accumulators ``(N, 3)`` and the secant memory: the last
    ``LBFGS_MEMORY`` pairs ``S``, ``Y`` (``(M, N)``, newest first)."""

    m: jax.Array
    v: jax.Array
    S: jax.Array
    Y: jax.Array


def init_accumulators(x: jax.Array) -> Accumulators:
    z = jnp.zeros(x.shape + (len(BETAS),), x.dtype)
    zm = jnp.zeros((LBFGS_MEMORY,) + x.shape, x.dtype)
    return Accumulators(m=z, v=z, S=zm, Y=zm)


def update_accumulators(
    acc: Accumulators, g: jax.Array, s: jax.Array | None = None, y: jax.Array | None = None
) -> Accumulators:
    """Add ``g`` to the moments and, when given, the secant pair ``(s, y)`` to the memory
    (a pair with ``s^T y <= 0`` or a zero step is not stored)."""
    b = jnp.asarray(BETAS, g.dtype)
    gg = g[:, None]
    S, Y = acc.S, acc.Y
    if s is not None:
        keep = jnp.vdot(s, y) > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * jnp.vdot(y, y))
        S = jnp.where(keep, jnp.concatenate([s[None], S[:-1]]), S)
        Y = jnp.where(keep, jnp.concatenate([y[None], Y[:-1]]), Y)
    return Accumulators(m=b * acc.m + (1 - b) * gg, v=b * acc.v + (1 - b) * gg**2, S=S, Y=Y)


def lbfgs_direction(g: jax.Array, S: jax.Array, Y: jax.Array) -> jax.Array:
    r"""Two-loop recursion: :math:`q = H g` with :math:`H` the L-BFGS inverse-Hessian estimate
    from the pairs in ``S``, ``Y`` (newest first; all-zero rows are empty slots) and
    :math:`H_0 = \gamma I`, :math:`\gamma = s^\top y / y^\top y` of the newest pair.
    Without any pair there is no scale-free curvature estimate and :math:`q = 0` (so the
    features stay invariant to the scale of :math:`f`)."""
    sy = jnp.sum(S * Y, axis=1)
    valid = sy > 0
    rho = jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)

    def first(q, i):
        alpha = rho[i] * jnp.vdot(S[i], q)
        return q - alpha * Y[i], alpha

    q, alphas = jax.lax.scan(first, g, jnp.arange(S.shape[0]))
    yy = jnp.vdot(Y[0], Y[0])
    gamma = jnp.where(valid[0], sy[0] / jnp.where(valid[0], yy, 1.0), 0.0)
    r = gamma * q

    def second(r, i):
        beta = rho[i] * jnp.vdot(Y[i], r)
        return r + S[i] * (alphas[i] - beta), None

    r, _ = jax.lax.scan(second, r, jnp.arange(S.shape[0])[::-1])
    return r


BFGS_SCALINGS = ("asymmetric", "up", "ol", "none")


def trace(H: jax.Array) -> jax.Array:
    r""":math:`\operatorname{tr} H` as the sum of the gathered diagonal: ``jnp.trace`` masks the
    whole matrix and reduces it, three memory passes over :math:`n^2` entries per call (about
    12 MB at n = 1000 in float32) where the diagonal needs :math:`n` reads."""
    return jnp.sum(jnp.diagonal(H))


def bfgs_inverse_update(
    H: jax.Array, s: jax.Array, y: jax.Array, scaling: str = "asymmetric"
) -> jax.Array:
    r"""Dense BFGS update of the inverse-Hessian estimate with the secant pair ``(s, y)``,
    with asymmetric self-scaling.

    With :math:`\rho = 1/s^\top y` and the Oren–Luenberger ratio
    :math:`r = s^\top y / y^\top H y`, the estimate is first rescaled,
    :math:`H \leftarrow \tau H` with :math:`\tau = \max(1, r)`, or :math:`\tau = r` when
    :math:`r <` ``SHRINK_BELOW`` (0.01), and then updated:

    .. math::
        H_+ = (I - \rho s y^\top) H (I - \rho y s^\top) + \rho s s^\top
            = H - \rho (v s^\top + s v^\top) + (\rho + \rho^2 y^\top v)\, s s^\top,
        \qquad v = H y,

    written in the second form so that every term is symmetric entry by entry and a
    symmetric :math:`H` stays exactly symmetric. :math:`H = 0` means "no pair yet": the
    first accepted pair sets :math:`H = \gamma I`, :math:`\gamma = s^\top y / y^\top y`
    (Nocedal & Wright, eq. 6.20) before updating, so :math:`q = H g` is invariant to the
    scale of :math:`f`. A pair with :math:`s^\top y \le 10^{-10}\|s\|\|y\|` is skipped,
    which keeps :math:`H` positive definite (in exact arithmetic).

    Why this scaling (ours; ``scripts/ablation_secant.py``): with fewer steps than
    coordinates the unexplored directions keep the curvature of the first pair, and when
    the curvature falls along the path (Rosenbrock, Powell) steps become far too short, so
    :math:`H` is scaled up whenever a pair shows it too small. Scaling down as readily
    (Oren–Luenberger both ways) loses what was learned after every high-curvature pair
    (Rosenbrock); never scaling down leaves :math:`H` far too large when the curvature
    rises by orders of magnitude (Griewank's ripples near its minimum), so it is scaled
    down only then. ``scaling`` selects the alternatives of that ablation: ``"up"``
    (:math:`\tau = \max(1, r)`), ``"ol"`` (:math:`\tau = r`) and ``"none"``
    (:math:`\tau = 1`, the textbook update); the networks always use the default.
    """
    if scaling not in BFGS_SCALINGS:
        raise ValueError(f"unknown BFGS scaling {scaling!r}; expected one of {BFGS_SCALINGS}")
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    keep = sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * yy)
    safe_sy = jnp.where(keep, sy, 1.0)
    fresh = trace(H) == 0
    gamma = safe_sy / jnp.where(keep, yy, 1.0)
    v = H @ y
    yv = jnp.vdot(y, v)
    ratio = safe_sy / jnp.where(yv > 0, yv, safe_sy)
    tau = {
        "asymmetric": jnp.where(ratio < SHRINK_BELOW, ratio, jnp.maximum(ratio, 1.0)),
        "up": jnp.maximum(ratio, 1.0),
        "ol": ratio,
        "none": jnp.ones_like(ratio),
    }[scaling]
    H0 = jnp.where(fresh, gamma * jnp.eye(H.shape[0], dtype=H.dtype), tau * H)
    v = jnp.where(fresh, gamma * y, tau * v)
    rho = 1.0 / safe_sy
    c = rho + rho * rho * jnp.vdot(y, v)
    Hn = H0 - rho * (jnp.outer(v, s) + jnp.outer(s, v)) + c * jnp.outer(s, s)
    return jnp.where(keep, Hn, H)


def sr1_inverse_update(H: jax.Array, s: jax.Array, y: jax.Array) -> jax.Array:
    r"""Dense symmetric-rank-one (SR1) update of an inverse-Hessian estimate with the secant
    pair ``(s, y)`` (Nocedal & Wright, eq. 6.25):

    .. math:: H_+ = H + \frac{v v^\top}{v^\top y}, \qquad v = s - H y,

    skipped when :math:`|v^\top y| \le r \|v\| \|y\|` (the classical safeguard, with
    :math:`r = \sqrt{\varepsilon}` of the dtype: 3.5e-4 in float32, 1.5e-8 in float64,
    where textbooks use 1e-8).
    :math:`H = 0` means "no pair yet": the first pair with :math:`s^\top y > 0` sets
    :math:`H = \gamma I`, :math:`\gamma = s^\top y / y^\top y`, first.

    Unlike BFGS it needs no line search for *quadratic termination*: on a quadratic
    :math:`H_+ y_j = s_j` holds for every earlier pair, so after :math:`n` linearly
    independent steps :math:`H` is the exact inverse Hessian, whatever the step lengths. It
    may be indefinite, so :mod:`optimus.optimizers.learned` uses its direction only while it
    predicts the secant pairs better than BFGS and it is a descent direction
    (``NetConfig.sr1``).
    """
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    fresh = trace(H) == 0
    start = fresh & (sy > 0) & (yy > 0)
    gamma = jnp.where(start, sy, 0.0) / jnp.where(start, yy, 1.0)
    H0 = jnp.where(fresh, gamma * jnp.eye(H.shape[0], dtype=H.dtype), H)
    # H0 y without materialising H0 (it would cost a write and a read of n^2 entries): the
    # product with the old H is the one the caller's prediction error also needs
    v = s - jnp.where(fresh, gamma * y, H @ y)
    vy = jnp.vdot(v, y)
    r = math.sqrt(float(jnp.finfo(H.dtype).eps))
    keep = (~fresh | start) & (jnp.abs(vy) > r * jnp.sqrt(jnp.vdot(v, v) * yy))
    Hn = H0 + jnp.outer(v, v) / jnp.where(keep, vy, 1.0)
    return jnp.where(keep, Hn, H0)


class RescaledBFGS(eqx.Module):
    r"""Dense BFGS with the initial matrix rescaled at every step (``NetConfig.bfgs_h0 =
    "rescale"``): :math:`H_k(\gamma) = A_k + \gamma\, C_k`, see
    :func:`bfgs_rescaled_update`."""

    A: jax.Array  # (N, N) the BFGS estimate built from H0 = 0
    C: jax.Array  # (N, N) what H0 = I contributes, V_k^T ... V_1^T V_1 ... V_k
    gamma: jax.Array  # () scale of the latest kept pair, s^T y / y^T y (0: no pair yet)


def bfgs_rescaled_init(n: int, dtype) -> RescaledBFGS:
    r"""No pair yet: :math:`A = 0`, :math:`C = I`, :math:`\gamma = 0`, so :math:`q = 0`."""
    return RescaledBFGS(jnp.zeros((n, n), dtype), jnp.eye(n, dtype=dtype), jnp.zeros((), dtype))


def bfgs_rescaled_update(h: RescaledBFGS, s: jax.Array, y: jax.Array) -> RescaledBFGS:
    r"""Dense BFGS whose initial matrix :math:`H_0 = \gamma_k I` is rescaled at every step,
    as L-BFGS does, but with unlimited memory (ours).

    The BFGS recursion :math:`H_k = V_k^\top H_{k-1} V_k + \rho_k s_k s_k^\top`,
    :math:`V_k = I - \rho_k y_k s_k^\top`, :math:`\rho_k = 1/s_k^\top y_k`, is linear in
    :math:`H_0`, so :math:`H_k = A_k + \gamma C_k` with

    .. math::
        A_k = V_k^\top A_{k-1} V_k + \rho_k s_k s_k^\top,\quad A_0 = 0, \qquad
        C_k = V_k^\top C_{k-1} V_k,\quad C_0 = I,

    and :math:`\gamma` can be chosen after the fact: :math:`\gamma_k = s_k^\top y_k /
    y_k^\top y_k` of the latest pair (Nocedal & Wright, eq. 7.20). :math:`A_k` carries the
    curvature measured along the steps taken, :math:`\gamma_k C_k` fills the directions not
    explored yet with the current curvature scale: the property the asymmetric
    self-scaling of :func:`bfgs_inverse_update` approximates by rescaling all of
    :math:`H`, which also rescales what was measured. Each update is two rank-two
    corrections, :math:`O(n^2)`, written in the symmetric form of
    :func:`bfgs_inverse_update`. A pair with :math:`s^\top y \le 10^{-10}\|s\|\|y\|` is
    skipped.
    """
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    keep = sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * yy)
    rho = 1.0 / jnp.where(keep, sy, 1.0)

    def sandwich(M):  # V^T M V
        v = M @ y
        c = rho * rho * jnp.vdot(y, v)
        return M - rho * (jnp.outer(v, s) + jnp.outer(s, v)) + c * jnp.outer(s, s)

    A = sandwich(h.A) + rho * jnp.outer(s, s)
    C = sandwich(h.C)
    gamma = sy / jnp.where(keep, yy, 1.0)
    return RescaledBFGS(
        jnp.where(keep, A, h.A), jnp.where(keep, C, h.C), jnp.where(keep, gamma, h.gamma)
    )


def bfgs_rescaled_direction(h: RescaledBFGS, g: jax.Array) -> jax.Array:
    r""":math:`q = (A + \gamma C)\, g` without forming the sum."""
    return h.A @ g + h.gamma * (h.C @ g)


def masked_mean(a: jax.Array, mask: jax.Array, axis: int = 0) -> jax.Array:
    """Mean over the valid coordinates (``mask`` True) along ``axis`` 0."""
    w = mask.astype(a.dtype)
    w = w.reshape(w.shape + (1,) * (a.ndim - 1))
    return jnp.sum(a * w, axis=axis) / jnp.maximum(jnp.sum(w, axis=axis), 1)


def _rms_normalize(ch: jax.Array, mask: jax.Array) -> jax.Array:
    """Divide every channel (column) by its RMS over valid coordinates; zero the padding.

    Channels are first divided by their largest magnitude, so that squaring cannot underflow
    or overflow whatever the scale of the objective."""
    ch = jnp.where(mask[:, None], ch, 0)
    tiny = jnp.finfo(ch.dtype).tiny
    peak = jnp.max(jnp.abs(ch), axis=0)
    ch = ch / (peak + tiny)
    ms = masked_mean(ch**2, mask)
    return ch * jax.lax.rsqrt(ms + tiny)


def _safe_log_ratio(a: jax.Array, b: jax.Array) -> jax.Array:
    tiny = jnp.finfo(a.dtype).tiny
    return jnp.log(a + tiny) - jnp.log(b + tiny)


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    tiny = jnp.finfo(a.dtype).tiny
    return jnp.vdot(a, b) / jnp.sqrt(jnp.vdot(a, a) * jnp.vdot(b, b) + tiny)


def reference_length(g: jax.Array, s: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    r"""RMS length of the Barzilai–Borwein step, :math:`\ell = \mathrm{rms}(g)\,|s^\top y| /
    y^\top y`, in coordinate units and invariant to :math:`f \to c f`; it shrinks with the
    gradient as the iterate converges. Before any gradient change is seen (:math:`y = 0`),
    :math:`\ell = 1` (the half-width of the unit box)."""
    n = jnp.maximum(jnp.sum(mask), 1).astype(g.dtype)
    yy = jnp.vdot(y, y)
    ok = yy > 0
    bb = jnp.sqrt(jnp.vdot(g, g) / n) * jnp.abs(jnp.vdot(s, y)) / jnp.where(ok, yy, 1.0)
    return jnp.where(ok, bb, 1.0)


def coordinate_features(
    g: jax.Array,
    acc: Accumulators,
    s: jax.Array,
    y: jax.Array,
    By: jax.Array,
    dx: jax.Array,
    q: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """Per-coordinate features, shape ``(N, N_COORD_FEATURES)``, RMS-normalised per channel."""
    m, v = acc.m, acc.v
    r = v[:, 2:3]
    eps = 1e-12 * masked_mean(v, mask)[None, :] + jnp.finfo(g.dtype).tiny
    rho_r = jax.lax.rsqrt(r + eps[:, 2:3])
    rho_v = jax.lax.rsqrt(v + eps)
    gg = g[:, None]
    chans = jnp.concatenate(
        [
            gg,
            m,
            r,
            m * rho_r,
            rho_r,
            gg * rho_v,
            v,
            rho_v,
            m * rho_v,
            s[:, None],
            y[:, None],
            By[:, None],
            dx[:, None],
            q[:, None],
        ],
        axis=1,
    )
    return _rms_normalize(chans, mask)


def global_features(
    t: jax.Array,
    f: jax.Array,
    f_prev: jax.Array,
    f0: jax.Array,
    g: jax.Array,
    g_prev: jax.Array,
    s: jax.Array,
    y: jax.Array,
    dx: jax.Array,
    q: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """Per-problem features, shape ``(N_GLOBAL_FEATURES,)``; invariant to ``f → c f``."""
    dtype = g.dtype
    n = jnp.maximum(jnp.sum(mask), 1).astype(dtype)
    tau = jnp.asarray(TIMESCALES, dtype)
    time = jnp.tanh(t.astype(dtype) / tau - 1)
    tiny = jnp.finfo(dtype).tiny
    df = jnp.tanh((f - f_prev) / (jnp.abs(f_prev) + tiny))
    logf = jnp.clip(_safe_log_ratio(jnp.abs(f), jnp.abs(f0)), -60, 60) / 10
    rms = lambda a: jnp.sqrt(jnp.vdot(a, a) / n)  # noqa: E731
    yy = jnp.vdot(y, y)
    bb = rms(g) * jnp.abs(jnp.vdot(s, y)) / (yy + tiny)
    has_prev = (t > 0).astype(dtype)
    glob = jnp.stack(
        [
            df,
            logf,
            _cos(g, s),
            _cos(g, g_prev),
            _cos(s, y),
            jnp.clip(jnp.log10(rms(s) + 1e-30), -30, 10) / 5,
            jnp.clip(jnp.log10(rms(dx) + 1e-30), -30, 10) / 5,
            jnp.clip(jnp.log10(bb + 1e-30), -30, 10) / 5,
            jnp.clip(jnp.log10(rms(q) + 1e-30), -30, 10) / 5,
            has_prev,
        ]
    )
    glob = jnp.where(jnp.isfinite(glob), glob, 0)
    return jnp.concatenate([time, glob]).astype(dtype)
