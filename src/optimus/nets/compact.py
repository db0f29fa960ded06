r"""Compact (low-rank) form of the learned optimizer's :math:`n\times n` matrices (ours;
``NetConfig.qn_memory``).

The full Optimus model keeps three dense matrices in its state: the preconditioner
:math:`B` (:func:`optimus.nets.optimus.precondition_update`), the BFGS inverse-Hessian
estimate :math:`H` (:func:`optimus.nets.features.bfgs_inverse_update`) and the SR1 estimate
(:func:`optimus.nets.features.sr1_inverse_update`). Each update and product reads and writes
:math:`n^2` entries (12 MB of state at :math:`n = 1000` in float32), so at large :math:`n`
they, not the network, set the cost of a step. Every one of them is a multiple of the
identity plus a sum of outer products of vectors seen so far, so after :math:`t` updates it
can be held exactly as

.. math:: H = c\,I + P^\top M P, \qquad P \in \mathbb R^{r\times n},\ M = M^\top \in
   \mathbb R^{r\times r},

with the rows of :math:`P` the vectors of the updates (:math:`s, y` for the secant
estimates, :math:`s - Hy` for SR1, the network's :math:`u` for :math:`B`; :math:`r = 2t`
or :math:`t`). Products cost
:math:`O(rn + r^2)` instead of :math:`O(n^2)`; the updates below are the dense ones
rewritten in coefficients over the rows of :math:`P`, equal in exact arithmetic (the tests
compare them with the dense updates in float64).

*BFGS* (asymmetric self-scaling; :math:`s, y` appended as rows :math:`k, k+1`, so
:math:`s = P^\top e_k`, :math:`y = P^\top e_{k+1}`): with :math:`p = P y`,
:math:`v = H y = P^\top w`, :math:`w = c\,e_{k+1} + M p`,
:math:`y^\top H y = c\,y^\top y + p^\top M p`, the dense update
:math:`H_+ = \tau H - \rho(\tau v s^\top + s\,\tau v^\top) + (\rho + \rho^2 \tau y^\top v)\,
s s^\top` becomes

.. math:: c_+ = \tau c, \qquad M_+ = \tau M - \rho\,\tau (w e_k^\top + e_k w^\top)
   + (\rho + \rho^2 \tau\, y^\top v)\, e_k e_k^\top

(:math:`c = \gamma`, :math:`M = 0`, :math:`\tau = 1` for the first pair).

*SR1*: :math:`v = s - H y` is computed as a vector and appended as one row, so that
:math:`M_+ = M + e_k e_k^\top / v^\top y` stays diagonal: the same sum of rank-one terms
as the dense estimate. (Keeping :math:`s` and :math:`y` as rows instead lets the
coefficients of :math:`v` grow large while :math:`v` itself vanishes, as it does once SR1
has learned a quadratic, and the division by :math:`v^\top y` then amplifies their
rounding: on a 16-dimensional quadratic that form stalled at :math:`10^{-2}` where the dense
one reached :math:`10^{-31}`.)

*Preconditioner*: :math:`B_+ = \rho B + (1-\rho) I + u u^\top` with :math:`u` appended as
row :math:`k`: :math:`c_+ = \rho c + 1 - \rho\ (= 1)`, :math:`M_+ = \rho M + e_k e_k^\top`.

The shapes are fixed when the state is built (``rows``), as :func:`jax.jit` needs. When the
rows run out the estimate freezes: later secant pairs are skipped and :math:`B` is only
damped, which keeps every property the dense forms guarantee (symmetry, :math:`B \succeq
I`) but is no longer the dense update. :func:`optimus.minimize` chooses ``qn_memory`` so that
this cannot happen (one update per evaluation at most) and switches to the compact form only
where it is the cheaper one (:data:`optimus.solve.COMPACT_MIN_RATIO`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.nets.features import SHRINK_BELOW


class Compact(eqx.Module):
    r"""A symmetric matrix :math:`c\,I + P^\top M P` held in compact form; rows ``k`` and
    after of ``P`` (and the matching rows and columns of ``M``) are unused, and the last
    rows are scratch space that is never referenced, so a write never needs a bounds check."""

    c: jax.Array  # () multiple of the identity (0: "no pair yet" for the secant estimates)
    P: jax.Array  # (rows + scratch, n) the update vectors, one per row
    M: jax.Array  # (rows + scratch, rows + scratch) symmetric coefficients
    k: jax.Array  # () int32 rows in use

    @property
    def n(self) -> int:
        return self.P.shape[1]

    @property
    def rows(self) -> int:
        """Rows available to updates (without the scratch rows)."""
        return self.P.shape[0] - SCRATCH


SCRATCH = 2  # rows past the capacity, written by an update that is then skipped


def compact_init(n: int, rows: int, dtype, c: float = 0.0) -> Compact:
    r""":math:`c\,I` with room for ``rows`` update vectors."""
    if rows < 1:
        raise ValueError(f"a compact matrix needs at least one row, got {rows}")
    r = rows + SCRATCH
    return Compact(
        c=jnp.asarray(c, dtype),
        P=jnp.zeros((r, n), dtype),
        M=jnp.zeros((r, r), dtype),
        k=jnp.zeros((), jnp.int32),
    )


def compact_apply(H: Compact, v: jax.Array) -> jax.Array:
    r""":math:`H v = c\,v + P^\top (M (P v))`, :math:`O(rn + r^2)`."""
    return H.c * v + H.P.T @ (H.M @ (H.P @ v))


def compact_dense(H: Compact) -> jax.Array:
    r"""The dense :math:`n\times n` matrix (for tests and inspection; ``hess_inv`` is the
    operator of :func:`compact_operator`)."""
    eye = jnp.eye(H.n, dtype=H.P.dtype)
    return H.c * eye + H.P.T @ H.M @ H.P


def _write(H: Compact, vecs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``P`` with ``vecs`` (``(j, n)``) written at row ``k`` (at the scratch rows when full),
    the row index used and whether there was room. Non-finite entries are written as 0: an
    unused row must stay finite, since :math:`0 \cdot \infty` would turn every product with
    ``P`` into NaN (such an update is skipped, or its step replaced by the safeguard)."""
    j = vecs.shape[0]
    vecs = jnp.where(jnp.isfinite(vecs), vecs, 0)
    room = H.k + j <= H.rows
    start = jnp.where(room, H.k, H.rows)
    P = jax.lax.dynamic_update_slice(H.P, vecs.astype(H.P.dtype), (start, jnp.zeros_like(start)))
    return P, start, room


def _fresh(H: Compact) -> jax.Array:
    """No pair yet, the dense forms' zero trace (``c`` alone could underflow to 0)."""
    return (H.c == 0) & (H.k == 0)


def compact_started(H: Compact) -> jax.Array:
    """Whether a secant estimate has had its first pair (the dense forms: non-zero trace)."""
    return ~_fresh(H)


def _unit(size: int, i: jax.Array, dtype) -> jax.Array:
    return (jnp.arange(size) == i).astype(dtype)


def compact_bfgs_update(H: Compact, s: jax.Array, y: jax.Array) -> Compact:
    r""":func:`optimus.nets.features.bfgs_inverse_update` (asymmetric self-scaling) in
    compact form (module docstring); a pair is also skipped when the rows are used up."""
    dtype = H.P.dtype
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    P, k, room = _write(H, jnp.stack([s, y]))
    keep = (sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * yy)) & room
    safe_sy = jnp.where(keep, sy, 1.0)
    fresh = _fresh(H)
    gamma = safe_sy / jnp.where(keep, yy, 1.0)
    p = P @ y
    Mp = H.M @ p
    yHy = H.c * yy + jnp.vdot(p, Mp)
    ratio = safe_sy / jnp.where(yHy > 0, yHy, safe_sy)
    tau = jnp.where(ratio < SHRINK_BELOW, ratio, jnp.maximum(ratio, 1.0))
    size = P.shape[0]
    e_s, e_y = _unit(size, k, dtype), _unit(size, k + 1, dtype)
    c0 = jnp.where(fresh, gamma, tau * H.c)
    M0 = jnp.where(fresh, jnp.zeros_like(H.M), tau * H.M)
    w = jnp.where(fresh, gamma * e_y, tau * (H.c * e_y + Mp))  # H0 y = P^T w
    yv = jnp.where(fresh, gamma * yy, tau * yHy)
    rho = 1.0 / safe_sy
    cc = rho + rho * rho * yv
    Mn = M0 - rho * (jnp.outer(w, e_s) + jnp.outer(e_s, w)) + cc * jnp.outer(e_s, e_s)
    return Compact(
        c=jnp.where(keep, c0, H.c),
        P=P,
        M=jnp.where(keep, Mn, H.M),
        k=jnp.where(keep, H.k + 2, H.k),
    )


def compact_sr1_update(H: Compact, s: jax.Array, y: jax.Array) -> Compact:
    r""":func:`optimus.nets.features.sr1_inverse_update` in compact form (module
    docstring); a pair is also skipped when the rows are used up."""
    dtype = H.P.dtype
    sy = jnp.vdot(s, y)
    yy = jnp.vdot(y, y)
    fresh = _fresh(H)
    start = fresh & (sy > 0) & (yy > 0)
    gamma = jnp.where(start, sy, 0.0) / jnp.where(start, yy, 1.0)
    c0 = jnp.where(fresh, gamma, H.c)
    v = s - jnp.where(fresh, gamma * y, compact_apply(H, y))
    vy = jnp.vdot(v, y)
    r = math.sqrt(float(jnp.finfo(dtype).eps))
    P, k, room = _write(H, v[None, :])
    keep = (~fresh | start) & (jnp.abs(vy) > r * jnp.sqrt(jnp.vdot(v, v) * yy)) & room
    e = _unit(P.shape[0], k, dtype)
    Mn = H.M + jnp.outer(e, e) / jnp.where(keep, vy, 1.0)
    return Compact(
        c=c0,
        P=P,
        M=jnp.where(keep, Mn, H.M),
        k=jnp.where(keep, H.k + 1, H.k),
    )


def compact_precondition_update(B: Compact, u: jax.Array, rho: jax.Array) -> Compact:
    r""":func:`optimus.nets.optimus.precondition_update` in compact form: :math:`B_+ = \rho B
    + (1-\rho) I + u u^\top`; with no row left, :math:`B_+ = \rho B + (1-\rho) I` (still
    :math:`\succeq I`). A non-finite ``u`` makes :math:`c` NaN, as it makes the dense
    :math:`B` non-finite, so that the step is non-finite and the safeguard resets
    :math:`B` (the row itself is written as zeros, :func:`_write`)."""
    dtype = B.P.dtype
    P, k, room = _write(B, u[None, :])
    e = _unit(P.shape[0], k, dtype) * room.astype(dtype)
    c = rho * B.c + (1 - rho)
    return Compact(
        c=jnp.where(jnp.all(jnp.isfinite(u)), c, jnp.nan).astype(dtype),
        P=P,
        M=rho * B.M + jnp.outer(e, e),
        k=jnp.where(room, B.k + 1, B.k),
    )


def compact_reset(H: Compact, c: float, pred: jax.Array) -> Compact:
    r"""``H`` reset to :math:`c\,I` where ``pred`` holds (the safeguard's fresh start). ``P``
    is kept as it is: with :math:`M = 0` and no row in use it adds nothing, and a reset then
    costs no pass over it."""
    return Compact(
        c=jnp.where(pred, jnp.asarray(c, H.c.dtype), H.c),
        P=H.P,
        M=jnp.where(pred, jnp.zeros_like(H.M), H.M),
        k=jnp.where(pred, jnp.zeros_like(H.k), H.k),
    )


def compact_operator(H: Compact, scale=None):
    r"""``H`` (one problem, arrays on the host) as a :class:`scipy.sparse.linalg.LinearOperator`
    :math:`v \mapsto D H D v`, :math:`D = \mathrm{diag}(\text{scale})` (the box half-widths,
    or 1), without forming the :math:`n \times n` matrix; ``.todense()`` forms it. This is
    ``OptimizeResult.hess_inv`` for a solve in compact form, as scipy's L-BFGS-B returns its
    inverse Hessian as an operator."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator

    c = float(H.c)
    P, M = np.asarray(H.P), np.asarray(H.M)
    n = P.shape[1]
    d = np.ones(n, P.dtype) if scale is None else np.asarray(scale, P.dtype)

    def matvec(v):
        v = np.asarray(v).reshape(n, -1) * d[:, None]
        out = c * v + P.T @ (M @ (P @ v))
        return (out * d[:, None]).astype(P.dtype)

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, matmat=matvec, dtype=P.dtype)
