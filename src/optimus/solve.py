r"""The driver: :func:`minimize`.

For a JAX objective the whole solve is one jitted ``lax.while_loop``: every iteration evaluates
:math:`f` and :math:`\nabla f` once at the point the optimizer asks for
(:mod:`optimus.optimizers.base`), tracks the best finite iterate, the history and the
termination status. ``fun`` is a static argument of the jitted solver, so a second call with
the same function object and shapes reuses the compiled loop. For a NumPy objective (``jac=``
given) the same jitted step runs in a host loop.

Bounds: with ``bounds=(lo, hi)`` the optimizer works in box-normalised coordinates
:math:`z \in [-1, 1]^n`, :math:`x = c + h z` with centre :math:`c` and half-width :math:`h`,
and the objective is only ever evaluated inside the box. First-order and learned methods are
*projected*: after every update the iterate is clipped back into :math:`[-1, 1]^n` (projected
gradient steps). Line-search methods (BFGS, L-BFGS) instead see the clipped objective
:math:`f(\mathrm{clip}(c + h z, lo, hi))`, differentiated so that a coordinate at or past a
bound keeps the objective's gradient where it points back into the box and gets zero where it
points out (:func:`_clip_kkt`), and every accepted iterate is clipped back into the box
(``unit_box``, :func:`box_options`), so a line search continues from the projection, not from
a flat region outside: a coordinate a line search pushed onto a bound is released when the
objective falls towards the inside, and a zero gradient is the box's KKT condition (a minimum
on a bound ends ``CONVERGED`` there). Not an active-set method: on 10 random boxed quadratics
at n = 6 the tests compare the value with scipy's L-BFGS-B. The ``gtol`` test of the
projected methods uses the same projected gradient. All learned methods were meta-trained in
box-normalised coordinates, so passing the box of the problem is recommended.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optimus.nets.compact import Compact, compact_operator
from optimus.optimizers import (
    LEARNED_METHODS,
    Optimizer,
    check_learned_params,
    check_method,
    get_optimizer,
)
from optimus.result import OptimizeResult, Status, make_result

logger = logging.getLogger("optimus.solve")
# a library configures no handler: quiet unless the application sets up logging
logging.getLogger("optimus").addHandler(logging.NullHandler())

RUNNING = -1
DEFAULT_MAX_EVALS_PER_STEP = 30
MAX_RETRIES = 30  # consecutive rejected trial points (step halved each time) before giving up


class Carry(eqx.Module):
    state: Any
    nfev: jax.Array
    best_x: jax.Array
    best_f: jax.Array
    best_g: jax.Array
    last_f: jax.Array
    hist: jax.Array
    eval_hist: jax.Array
    status: jax.Array
    anchor_x: jax.Array  # last accepted (finite) evaluation point
    anchor_f: jax.Array  # objective there
    n_bad: jax.Array  # consecutive rejected trial points
    n_rejected: jax.Array  # all rejected trial points
    guard: jax.Array  # the pending point comes from a safeguard (fallback) step


def _init_carry(opt: Optimizer, z0: jax.Array, steps: int, key, max_evals) -> Carry:
    dtype = z0.dtype
    return Carry(
        state=opt.init(z0, key),
        nfev=jnp.zeros((), jnp.int32),
        best_x=z0,
        best_f=jnp.asarray(jnp.inf, dtype),
        best_g=jnp.zeros_like(z0),
        last_f=jnp.asarray(jnp.nan, dtype),
        hist=jnp.full((steps + 1,), jnp.nan, dtype),
        eval_hist=jnp.full((max_evals,), jnp.nan, dtype),
        status=jnp.asarray(RUNNING, jnp.int32),
        anchor_x=z0,
        anchor_f=jnp.asarray(jnp.inf, dtype),
        n_bad=jnp.zeros((), jnp.int32),
        n_rejected=jnp.zeros((), jnp.int32),
        guard=jnp.zeros((), bool),
    )


def _step(
    opt: Optimizer, carry: Carry, f, g, steps: int, max_evals, gtol, project: bool = False
) -> Carry:
    """Account for one evaluation ``(f, g)`` at ``carry.state.x`` and advance the optimizer;
    with ``project`` the next iterate is clipped into the unit box."""
    state = carry.state
    dtype = carry.best_f.dtype
    f = jnp.asarray(f, dtype)
    g = jnp.asarray(g, dtype)
    nfev = carry.nfev + 1
    finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
    first = carry.nfev == 0
    better = finite & (f < carry.best_f)
    best_x = jnp.where(better, state.x, carry.best_x)
    best_f = jnp.where(better, f, carry.best_f)
    best_g = jnp.where(better, g, carry.best_g)
    hist = jnp.where(first, carry.hist.at[0].set(f), carry.hist)
    eval_hist = carry.eval_hist.at[carry.nfev].set(best_f, mode="drop")
    # projected methods: the gradient test is the box's KKT condition (components that
    # point out of the unit box at an active bound do not count); line-search methods get
    # that gradient from the box already (_clip_kkt)
    g_stat = kkt_gradient(state.x, g, -1, 1) if project else g
    converged = finite & (jnp.max(jnp.abs(g_stat), initial=0.0) <= gtol) & (f <= best_f)

    if opt.uses_line_search:
        # a non-finite trial point is reported as +inf: the line search then shrinks the step
        new_state = opt.update(state, jnp.where(finite, f, jnp.inf), jnp.where(finite, g, 0))
        anchor_x, anchor_f, n_bad = carry.anchor_x, carry.anchor_f, carry.n_bad
        n_rejected, guard = carry.n_rejected + (~finite).astype(jnp.int32), carry.guard
        stop_nonfinite = new_state.failed & ~finite
    else:
        # a non-finite trial point, or an increase after a safeguard step, is rejected and
        # retried half-way to the last accepted point (at most MAX_RETRIES times in a row),
        # unless the optimizer takes non-finite points itself at this one (a smoothing
        # phase's samples): then it gets the point, and it counts as rejected
        own = _handles_nonfinite(state)
        bad = ~finite | (carry.guard & (f > carry.anchor_f))
        retry = bad & ~first & (carry.n_bad < MAX_RETRIES) & ~own
        stop_nonfinite = ~finite & ~retry & ~own
        accept = ~retry & ~stop_nonfinite
        updated = opt.update(state, f, g)
        x_retry = carry.anchor_x + 0.5 * (state.x - carry.anchor_x)
        retried = eqx.tree_at(lambda s: s.x, state, x_retry)
        new_state = jax.tree.map(
            lambda old, upd, ret: jnp.where(accept, upd, jnp.where(retry, ret, old)),
            state,
            updated,
            retried,
        )
        anchor_x = jnp.where(accept & finite, state.x, carry.anchor_x)
        anchor_f = jnp.where(accept & finite, f, carry.anchor_f)
        n_bad = jnp.where(retry, carry.n_bad + 1, 0).astype(jnp.int32)
        n_rejected = carry.n_rejected + (retry | (own & ~finite)).astype(jnp.int32)
        fell_back = _n_fallback(updated) > _n_fallback(state)
        guard = jnp.where(accept, fell_back, carry.guard)
    if project:
        new_state = _project(new_state)
    advanced = new_state.nit > state.nit
    hist = jnp.where(advanced, hist.at[jnp.minimum(new_state.nit, steps)].set(best_f), hist)

    status = jnp.select(
        [
            first & ~finite,
            stop_nonfinite,
            converged,
            new_state.failed,
            new_state.nit >= steps,
            nfev >= max_evals,
        ],
        [
            Status.NO_FINITE_POINT,
            Status.NONFINITE,
            Status.CONVERGED,
            Status.LINESEARCH_FAILED,
            Status.MAX_STEPS,
            Status.MAX_EVALS,
        ],
        RUNNING,
    ).astype(jnp.int32)
    return Carry(
        new_state,
        nfev,
        best_x,
        best_f,
        best_g,
        f,
        hist,
        eval_hist,
        status,
        anchor_x,
        anchor_f,
        n_bad,
        n_rejected,
        guard,
    )


def _n_fallback(state) -> jax.Array:
    return getattr(state, "n_fallback", jnp.zeros((), jnp.int32))


def _handles_nonfinite(state) -> jax.Array:
    """Whether the optimizer takes a non-finite evaluation at its pending point itself
    (``state.handles_nonfinite``, e.g. a smoothing phase's sample) instead of the driver's
    retry."""
    return jnp.asarray(getattr(state, "handles_nonfinite", False))


def _project(state):
    """The state with its pending point clipped into the unit box; a state with a
    ``project(lo, hi)`` method (the smoothing layer, which also keeps its centre inside)
    projects itself."""
    if hasattr(state, "project"):
        return state.project(-1.0, 1.0)
    return eqx.tree_at(lambda s: s.x, state, jnp.clip(state.x, -1, 1))


@jax.custom_vjp
def _clip_kkt(x, lo, hi):
    """``clip(x, lo, hi)`` whose derivative passes a cotangent ``g`` (the objective's gradient
    at the clipped point) where it points into the box and stops it where it points out:
    :math:`\bar g_i = g_i` inside, and at or past a bound only when the descent direction
    :math:`-g_i` leads back inside (``g_i > 0`` at ``hi``, ``g_i < 0`` at ``lo``); else 0.
    The plain clip's derivative is 0 at and past a bound in both directions, which freezes a
    coordinate that a line-search step pushed onto a bound (or that starts there) even when
    the objective falls towards the inside, and then reports a zero gradient there as
    convergence. With this one a zero gradient is the projected-gradient (KKT) condition of
    the box."""
    return jnp.clip(x, lo, hi)


def _clip_kkt_fwd(x, lo, hi):
    out = jnp.clip(x, lo, hi)
    return out, (out, lo, hi)


def _clip_kkt_bwd(res, g):
    out, lo, hi = res
    return (kkt_gradient(out, g, lo, hi), None, None)


_clip_kkt.defvjp(_clip_kkt_fwd, _clip_kkt_bwd)


def kkt_gradient(x, g, lo, hi):
    """The gradient ``g`` at a point ``x`` of the box with the components zeroed that point
    out of it at an active bound (see :func:`_clip_kkt`)."""
    outward = ((x >= hi) & (g < 0)) | ((x <= lo) & (g > 0))
    return jnp.where(outward, jnp.zeros_like(g), g)


class _Box(eqx.Module):
    """Box-normalising change of variables ``x = clip(c + h z, lo, hi)``."""

    lo: jax.Array
    hi: jax.Array

    def to_x(self, z):
        """``clip(c + h z)`` for line-search methods, with the derivative of
        :func:`_clip_kkt` (a coordinate at a bound is released when the objective falls
        towards the inside)."""
        c, h = 0.5 * (self.hi + self.lo), 0.5 * (self.hi - self.lo)
        return _clip_kkt(c + h * z, self.lo.astype(z.dtype), self.hi.astype(z.dtype))

    def affine(self, z):
        """``c + h z`` for projected methods, whose ``z`` stays in the box. The value is clipped
        to ``[lo, hi]`` (``c + h`` may round one ulp past ``hi``), the derivative is that of
        ``c + h z`` (no clip: a projected gradient sees the objective's gradient at the bound)."""
        x = 0.5 * (self.hi + self.lo) + 0.5 * (self.hi - self.lo) * z
        return x + jax.lax.stop_gradient(jnp.clip(x, self.lo, self.hi) - x)

    def to_z(self, x):
        c, h = 0.5 * (self.hi + self.lo), 0.5 * (self.hi - self.lo)
        return (jnp.clip(x, self.lo, self.hi) - c) / h

    def grad_z(self, x, gx, projected: bool):
        """Chain rule for a gradient ``gx`` at ``x = to_x(z)`` (or ``affine(z)``): the
        derivative of :meth:`to_x` (:func:`_clip_kkt`) unless the method is projected."""
        h = 0.5 * (self.hi - self.lo)
        if projected:
            return gx * h
        return kkt_gradient(x, gx, self.lo, self.hi) * h


def _to_x_map(box: _Box | None, opt: Optimizer):
    """Map from optimizer coordinates to ``x`` and whether iterates are projected."""
    if box is None:
        return (lambda z: z), False
    if opt.uses_line_search:
        return box.to_x, False
    return box.affine, True


def _build(method, options, params, dyn_options=None):
    return get_optimizer(method, params=params, **dict(options), **(dyn_options or {}))


def _solve_jax_impl(
    fun_static,
    method,
    options,
    steps,
    max_evals,
    verbose,
    fun_dyn,
    dyn_options,
    params,
    x0_tree,
    box,
    gtol,
    key,
):
    fun = eqx.combine(fun_dyn, fun_static)
    return solve_core(
        fun,
        method,
        options,
        steps,
        max_evals,
        verbose,
        dyn_options,
        params,
        x0_tree,
        box,
        gtol,
        key,
    )


def solve_core(
    fun, method, options, steps, max_evals, verbose, dyn_options, params, x0_tree, box, gtol, key
):
    """The whole solve of one problem as a traceable function (a ``lax.while_loop``): returns
    ``(carry, x_best, hess_inv, n_fallback)``. Jitted by :func:`minimize`, vmapped over
    problems by :func:`optimus.minimize_batch`."""
    opt = _build(method, options, params, dyn_options)
    x0, unravel = ravel_pytree(x0_tree)
    to_x, project = _to_x_map(box, opt)
    z0 = x0 if box is None else box.to_z(x0)

    def objective(z):  # a size-1 output of any shape is the scalar value
        return jnp.reshape(fun(unravel(to_x(z))), ())

    vg = jax.value_and_grad(objective)

    def body(carry):
        f, g = vg(carry.state.x)
        new = _step(opt, carry, f, g, steps, max_evals, gtol, project)
        if verbose:  # static: with verbose off nothing is traced, the loop is unchanged
            nit = new.state.nit
            due = ((nit > carry.state.nit) & (nit % verbose == 0)) | (new.status != RUNNING)
            jax.lax.cond(
                due,
                lambda: jax.debug.callback(
                    functools.partial(_print_progress, method),
                    nit,
                    new.nfev,
                    new.best_f,
                    jnp.max(jnp.abs(new.best_g), initial=0.0),
                    ordered=True,
                ),
                lambda: None,
            )
        return new

    carry = jax.lax.while_loop(
        lambda c: c.status == RUNNING, body, _init_carry(opt, z0, steps, key, max_evals)
    )
    hess_inv = None if opt.hess_inv is None else opt.hess_inv(carry.state)
    return carry, to_x(carry.best_x), hess_inv, _n_fallback(carry.state)


_SOLVE_STATIC = ("fun_static", "method", "options", "steps", "max_evals", "verbose")
_solve_jax = jax.jit(_solve_jax_impl, static_argnames=_SOLVE_STATIC)


class Uncached:
    """An objective that cannot be hashed (e.g. a plain dataclass with ``__call__``), made a
    static argument of a solve that is compiled for this call only: its attributes may have
    changed since an earlier call, so no compiled loop is reused (see
    :func:`split_objective`)."""

    __slots__ = ("fun",)

    def __init__(self, fun):
        self.fun = fun

    def __call__(self, *args):
        return self.fun(*args)


def split_objective(fun) -> tuple[Any, Any]:
    """``(dynamic, static)`` parts of an objective for the compiled solve: the arrays inside
    ``fun`` (e.g. of an ``equinox.Module`` objective) are traced and the rest is static, so
    objectives that differ only in their arrays share one compilation. When the static part
    cannot be hashed, the whole objective becomes an :class:`Uncached` static part (its arrays
    are constants of a loop compiled for one call; make it an ``equinox.Module`` or hashable
    to reuse the compiled loop)."""
    fun_dyn, fun_static = eqx.partition(fun, eqx.is_array)
    try:
        hash(fun_static)
    except TypeError:
        return None, Uncached(fun)
    return fun_dyn, fun_static


def fresh_jit(impl, jit=jax.jit, **jit_kwargs):
    """``jit`` (``jax.jit`` or ``equinox.filter_jit``) of a new function object wrapping
    ``impl``, whose compilation cache dies with it (for :class:`Uncached` objectives)."""

    @functools.wraps(impl)
    def call(*args, **kwargs):
        return impl(*args, **kwargs)

    return jit(call, **jit_kwargs)


def _print_progress(method, nit, nfev, best_f, gnorm) -> None:
    print(
        f"optimus[{method}] iter {int(nit):6d}  nfev {int(nfev):7d}  "
        f"best f {float(best_f): .6e}  |g|inf {float(gnorm):.3e}",
        flush=True,
    )


@functools.partial(jax.jit, static_argnames=("method", "options", "steps", "max_evals"))
def _host_init(method, options, steps, max_evals, dyn_options, params, z0, key):
    return _init_carry(_build(method, options, params, dyn_options), z0, steps, key, max_evals)


@functools.partial(jax.jit, static_argnames=("method", "options", "steps", "max_evals", "project"))
def _host_step(method, options, steps, max_evals, project, dyn_options, params, carry, f, g, gtol):
    opt = _build(method, options, params, dyn_options)
    return _step(opt, carry, f, g, steps, max_evals, gtol, project)


# ---------------------------------------------------------------------------------------------
# input validation


def _as_float_tree(x0: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(x0)
    if not leaves:
        raise ValueError("x0 is empty: it must contain at least one array")
    out = []
    for leaf in leaves:
        arr = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"x0 must be a floating-point array (or pytree of them); got dtype {arr.dtype}. "
                "Convert it first, e.g. np.asarray(x0, dtype=float)."
            )
        if not np.all(np.isfinite(np.asarray(arr))):
            raise ValueError("x0 contains NaN or inf; the starting point must be finite")
        out.append(jnp.asarray(arr))
    if sum(a.size for a in out) == 0:
        raise ValueError("x0 has no elements")
    dtypes = {a.dtype for a in out}
    if len(dtypes) > 1:
        raise TypeError(f"all leaves of x0 must share one dtype; got {sorted(map(str, dtypes))}")
    return jax.tree_util.tree_unflatten(treedef, out)


def _parse_bounds(bounds, x0_flat: jax.Array) -> _Box | None:
    """Accepts ``scipy.optimize.Bounds``, ``(lo, hi)`` with scalars or length-n arrays, or a
    sequence of n ``(lo, hi)`` pairs (scipy's format, which wins when n == 2 is ambiguous)."""
    if bounds is None:
        return None
    n = x0_flat.shape[0]
    msg = (
        f"bounds must be scipy.optimize.Bounds, (lo, hi) with scalars or arrays of length {n}, "
        f"or a sequence of {n} (lo, hi) pairs"
    )
    try:
        if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
            lo, hi = bounds.lb, bounds.ub
        elif np.shape(bounds) == (n, 2):
            arr = np.asarray(bounds, float)
            lo, hi = arr[:, 0], arr[:, 1]
        elif len(bounds) == 2:
            lo, hi = bounds
        else:
            raise ValueError(msg)
        lo = np.broadcast_to(np.asarray(lo, float), (n,))
        hi = np.broadcast_to(np.asarray(hi, float), (n,))
    except (ValueError, TypeError):
        raise ValueError(msg) from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("bounds must be finite (use bounds=None for an unbounded problem)")
    if np.any(lo >= hi):
        raise ValueError("every lower bound must be strictly below its upper bound")
    dtype = x0_flat.dtype
    return _Box(lo=jnp.asarray(lo, dtype), hi=jnp.asarray(hi, dtype))


def _check_scalar_output(fun, x0_tree) -> None:
    try:
        out = jax.eval_shape(fun, x0_tree)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            "fun could not be traced by JAX (it converts its input to NumPy or branches on "
            "values). Either write it with jax.numpy, or pass jac= (a gradient callable, or "
            "jac=True if fun returns (value, grad)) to use the NumPy path."
        ) from e
    shape = getattr(out, "shape", None)
    if shape is None:
        raise TypeError(f"fun must return a scalar array, got {type(out).__name__}")
    if math.prod(shape) != 1:
        raise ValueError(f"fun must return a scalar, got an output of shape {shape}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"fun must return a floating-point scalar, got dtype {out.dtype}")


# ---------------------------------------------------------------------------------------------
# public entry point


def _with_rule_options(method: str, params: Any, options: dict[str, Any]) -> Any:
    """``params`` with the update-rule fields in ``options`` changed (learned methods)."""
    from optimus.nets import with_rule

    check_learned_params(method, params)
    try:
        return with_rule(params, **options)
    except ValueError as e:
        raise ValueError(f"invalid options for method {method!r}: {e}") from None


SMOOTH_BUDGET_FRACTION = 0.7
r"""The most of a learned method's evaluation budget that its smoothing phase may take
(:mod:`optimus.optimizers.smoothing`): :func:`minimize` shortens the phase to
:math:`R \le \lfloor(0.7 B - 3) / k\rfloor` rounds of :math:`k` samples for a budget of
:math:`B` evaluations (the phase and its detection take :math:`R k + 3`), unless the
``smooth_rounds`` option is given. The shipped 8 rounds of 8 fit a budget of 100."""


def _fit_smoothing(params: Any, budget: int) -> Any:
    """``params`` with ``smooth_rounds`` shortened to fit ``budget`` evaluations
    (:data:`SMOOTH_BUDGET_FRACTION`)."""
    config = getattr(params, "config", None)
    rounds = getattr(config, "smooth_rounds", 0)
    if rounds == 0:
        return params
    fit = max(0, math.floor((SMOOTH_BUDGET_FRACTION * budget - 3) / config.smooth_samples))
    if fit >= rounds:
        return params
    from optimus.nets import with_rule

    return with_rule(params, smooth_rounds=fit)


COMPACT_MIN_RATIO = 8
r""":func:`minimize` holds a learned method's :math:`n\times n` matrices (the preconditioner
:math:`B`, the BFGS and SR1 estimates) in compact form (:mod:`optimus.nets.compact`) when
:math:`n > 8 m`, :math:`m = \min(\text{steps}, \text{max\_evals})` the most updates they can
receive, unless the ``qn_memory`` option is given (0: always dense). A compact matrix with
room for :math:`m` updates keeps up to :math:`2m` vectors of length :math:`n` where the dense
one keeps :math:`n^2` entries, and equals it in exact arithmetic. It needs less memory from
:math:`n \approx 2m`, but its products read those vectors several times per step, so it is
faster only from :math:`n \approx 8m`: with :math:`m = 100` on a 2-core Intel Xeon, 1.04 /
2.46 / 3.31 / 4.23 / 27.0 ms per step dense against 1.34 / 2.52 / 3.33 / 3.97 / 9.69
compact at :math:`n` = 300 / 600 / 800 / 1000 / 3000 (``bench_results/step_cost/``)."""


def fit_memory(params: Any, n: int, budget: int, options: dict[str, Any] | None) -> Any:
    """``params`` with ``qn_memory`` set for a problem of ``n`` unknowns and ``budget``
    updates (:data:`COMPACT_MIN_RATIO`); unchanged for classical methods, for networks
    without dense matrices and when the caller chose ``qn_memory`` (in ``options``, or a
    non-zero value in the network's config)."""
    config = getattr(params, "config", None)
    if config is None or "qn_memory" in (options or {}) or config.qn_memory:
        return params  # a classical method, or the caller chose
    from optimus.nets import with_rule
    from optimus.optimizers.learned import uses_dense_bfgs, uses_preconditioner

    if config.secant == "bfgs" and config.bfgs_h0 == "rescale":
        return params  # the rescaled estimate is dense only
    if not (uses_preconditioner(params) or uses_dense_bfgs(params)):
        return params  # no n x n matrix in the state
    if n <= COMPACT_MIN_RATIO * budget:
        return params

    return with_rule(params, qn_memory=int(budget))


def prepare_method(fun, method, steps, max_evals, gtol, params, options):
    """Validate the arguments :func:`minimize` and :func:`optimus.minimize_batch` share.

    Returns ``(method, steps, max_evals, params, options_key, dyn_options)``: the learned
    methods' weights (the shipped ones when ``params`` is None) with their update-rule
    ``options`` applied; for the other methods float options as traced arrays
    (``dyn_options``, so tuning a learning rate does not recompile) and the rest as a
    hashable static key."""
    method = check_method(method)
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    if max_evals is None:
        max_evals = DEFAULT_MAX_EVALS_PER_STEP * steps
    if isinstance(max_evals, bool) or not isinstance(max_evals, int | np.integer) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer, got {max_evals!r}")
    max_evals = int(max_evals)
    if isinstance(gtol, bool) or not (
        isinstance(gtol, int | float | np.integer | np.floating) and gtol >= 0
    ):
        raise ValueError(f"gtol must be a non-negative number, got {gtol!r}")
    options = dict(options or {})
    if method in LEARNED_METHODS and params is None:
        from optimus.pretrained import load_pretrained

        params = load_pretrained(method)
    if method in LEARNED_METHODS:
        chose_rounds = "smooth_rounds" in options
        if options:
            params = _with_rule_options(method, params, options)
            options = {}
        if not chose_rounds:
            params = _fit_smoothing(params, min(steps, max_evals))
    opt = get_optimizer(method, params=params, **options)  # validates params and options
    # float hyper-parameters of the first-order methods are traced (no recompilation when
    # tuning a learning rate); everything else (ints, strings, and the line-search constants,
    # which the line-search methods check in Python when they are built) is static
    dyn_options = {
        k: jnp.asarray(v)
        for k, v in options.items()
        if isinstance(v, float) and not isinstance(v, bool) and not opt.uses_line_search
    }
    static_options = {k: v for k, v in options.items() if k not in dyn_options}
    try:
        options_key = tuple(sorted(static_options.items()))
        hash(options_key)
    except TypeError:
        raise ValueError("options values must be numbers, strings or tuples") from None
    return method, steps, max_evals, params, options_key, dyn_options


def box_options(method: str, options_key: tuple, box: _Box | None) -> tuple:
    """The static options with ``unit_box=True`` added for a line-search method solving in
    box-normalised coordinates (it then clips every accepted iterate into the box, see
    :func:`optimus.optimizers.quasi_newton.bfgs`)."""
    if box is None or method in LEARNED_METHODS:
        return options_key
    if not get_optimizer(method, **dict(options_key)).uses_line_search:
        return options_key
    return tuple(sorted({**dict(options_key), "unit_box": True}.items()))


def minimize(
    fun: Callable[..., Any],
    x0: Any,
    *,
    method: str = "optimus",
    steps: int = 100,
    max_evals: int | None = None,
    bounds: Any = None,
    key: jax.Array | None = None,
    params: Any = None,
    jac: Callable[..., Any] | bool | None = None,
    callback: Callable[[OptimizeResult], Any] | None = None,
    gtol: float = 1e-5,
    options: dict[str, Any] | None = None,
    verbose: bool | int = False,
) -> OptimizeResult:
    r"""Minimize a scalar function.

    Args:
        fun: objective. A JAX-traceable function of ``x0``'s structure (array or pytree of
            arrays) returning a scalar; or, with ``jac`` given, any Python/NumPy function of a
            NumPy array.
        x0: starting point (finite, floating point). Its dtype is kept (float32 by default in
            JAX; float64 under ``jax.enable_x64``).
        method: one of :func:`optimus.methods`.
        steps: iteration budget. For first-order and learned methods one iteration is one
            objective+gradient evaluation (plus any rejected trial points, see below);
            BFGS/L-BFGS spend several per iteration.
        max_evals: objective+gradient evaluation budget (default ``30 * steps``).
        bounds: ``(lo, hi)`` (scalars or arrays) or a sequence of ``(lo, hi)`` pairs: the
            optimizer then works in box-normalised coordinates and ``fun`` is only evaluated
            inside the box. ``x0`` is clipped into the box.
        key: PRNG key passed to the optimizer's ``init`` (no built-in method is random).
        params: meta-parameters (a network) of a learned method; defaults to the shipped
            pretrained weights for that method.
        jac: ``None`` (JAX autodiff), a callable returning the gradient, or ``True`` when
            ``fun`` returns ``(value, grad)``, as in :func:`scipy.optimize.minimize`.
        callback: called after every iteration with an intermediate :class:`OptimizeResult`
            (``x``, ``fun``, ``nit``, ``nfev``); returning ``True`` (also a NumPy or JAX
            boolean scalar) or raising ``StopIteration`` stops the solve (status
            ``CALLBACK_STOP``). Runs on the host.
        gtol: stop when :math:`\|\nabla f\|_\infty \le` ``gtol`` at the best iterate
            (with ``bounds``: the projected gradient, without the components that point out
            of the box at a bound the iterate sits on, in box-normalised coordinates).
        options: hyper-parameters of classical methods (``learning_rate``, ``memory``, ...);
            for learned methods, fields of the update rule around the network
            (``optimus.nets.optimus.RULE_FIELDS``), e.g. ``{"restart": 0.0,
            "smooth_rounds": 0}`` for a purely local search without the restarts and the
            smoothing phase of the shipped function-trained models. Unless
            ``smooth_rounds`` is given, a smoothing phase is shortened to take at most 70 %
            of ``min(steps, max_evals)`` (:data:`SMOOTH_BUDGET_FRACTION`). Unless
            ``qn_memory`` is given, ``optimus``' n x n matrices are held in compact form
            when ``n > 8 min(steps, max_evals)`` (:data:`COMPACT_MIN_RATIO`;
            ``{"qn_memory": 0}`` keeps them dense).
        verbose: ``False`` (default) prints nothing; ``True`` prints a progress line every 10
            iterations, an integer ``k >= 1`` every ``k`` iterations, plus one at the end. In
            the jitted loop the lines come from :func:`jax.debug.callback`; with ``verbose``
            off no callback is traced, so the compiled loop is exactly the quiet one.

    Returns:
        :class:`optimus.OptimizeResult` with ``x`` the best finite iterate seen and ``fun``
        the objective there.

    Raises:
        ValueError, TypeError: invalid arguments (the only exceptions ``minimize`` raises on
            its own; an exception raised while *tracing* a JAX objective propagates as is).

    **Objectives that fail.** The same rules hold for every method:

    * *NaN or inf value, or a non-finite gradient with a finite value*, at a trial point:
      the point is rejected and never becomes the result. BFGS/L-BFGS treat it as
      :math:`+\infty` and their line search shrinks the step. First-order and learned
      methods retry the point half-way back to the last accepted point (except a
      smoothing phase's samples, which the phase skips itself), up to
      ``MAX_RETRIES = 30`` times in a row (``result.n_rejected`` counts the retries, and for
      the shipped learned models also the trial points their step-acceptance rule rejected
      for an increase, see :mod:`optimus.optimizers.acceptance`); if the
      objective is still non-finite the solve stops with ``status=NONFINITE``,
      ``success=False`` and the best finite iterate. Non-finite at ``x0``: clean stop with
      ``NO_FINITE_POINT``.
    * *An exception inside a NumPy objective or its gradient* (``jac=`` path): clean stop
      with ``status=OBJECTIVE_ERROR``, ``success=False``, a message naming the exception,
      the best iterate so far (``x0`` when none), and the exception object in
      ``result.exception``. ``KeyboardInterrupt`` and other non-``Exception`` errors
      propagate. ``nfev`` counts only evaluations that returned.
    * *A discontinuous objective* gets no special treatment: the result is still the best
      point evaluated with ``fun = f(x)``; a line search may stop with ``LINESEARCH_FAILED``
      when a jump defeats the Wolfe conditions.
    * *Learned methods* also replace a non-finite or wildly growing network step by a safe
      gradient step and reset their preconditioner (:mod:`optimus.optimizers.learned`);
      ``result.n_fallback`` counts those steps, and a trial point reached by such a step
      that is worse than the previous point is retried with the step halved.

    Notable events (fallbacks, rejected points, non-finite stops, line-search failures,
    objective exceptions) are logged on the ``optimus.solve`` logger of the standard
    :mod:`logging` module; the library installs no handler, so nothing shows unless the
    application configures logging.

    **Determinism.** ``minimize`` has no hidden randomness: the same inputs and ``key`` on
    the same machine (same JAX/XLA version, same flags) give bit-identical results on the
    same path. The jitted loop and the host loop (taken with ``jac=`` or ``callback=``)
    compile the step separately, and :func:`optimus.minimize_batch` batches it, so these
    agree with each other only to rounding, like different machines: there too,
    floating-point reductions may be reordered (vectorisation width, fusion, thread count),
    so results agree to rounding (about ``1e-6`` relative in float32, ``1e-14`` in float64)
    per operation; iterative optimisation can amplify such differences along a trajectory
    (strongly on chaotic, multimodal objectives), so compare final objective values across
    paths and machines with a tolerance, not bitwise.
    """
    method, steps, max_evals, params, options_key, dyn_options = prepare_method(
        fun, method, steps, max_evals, gtol, params, options
    )
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    verbose = _check_verbose(verbose)

    x0_tree = _as_float_tree(x0)
    x0_flat, unravel = ravel_pytree(x0_tree)
    box = _parse_bounds(bounds, x0_flat)
    if box is not None:
        x0_flat = jnp.clip(x0_flat, box.lo, box.hi)
        x0_tree = unravel(x0_flat)
    options_key = box_options(method, options_key, box)
    params = fit_memory(params, x0_flat.size, min(steps, max_evals), options)
    dtype = x0_flat.dtype
    common = dict(
        method=method, options=options_key, steps=steps, params=params, dyn_options=dyn_options
    )
    logger.debug(
        "minimize: method=%s n=%d dtype=%s steps=%d max_evals=%d",
        method,
        x0_flat.size,
        dtype,
        steps,
        max_evals,
    )

    error = None
    if jac is None and callback is None:
        _check_scalar_output(fun, x0_tree)
        fun_dyn, fun_static = split_objective(fun)
        solve = _solve_jax
        if isinstance(fun_static, Uncached):
            solve = fresh_jit(_solve_jax_impl, static_argnames=_SOLVE_STATIC)
        carry, x_best, hess_inv, n_fallback = solve(
            fun_static=fun_static,
            fun_dyn=fun_dyn,
            x0_tree=x0_tree,
            box=box,
            max_evals=max_evals,
            verbose=verbose,
            gtol=jnp.asarray(gtol, dtype),
            key=key,
            **common,
        )
    else:
        carry, x_best, hess_inv, n_fallback, error = _solve_host(
            fun, jac, callback, x0_tree, box, max_evals, gtol, key, common, verbose
        )

    fin = finalize(carry, x_best, hess_inv, x0_flat, box)
    status = Status(int(fin["status"]))
    nit = int(carry.state.nit)
    extra: dict[str, Any] = {}
    if error is not None:
        status = Status.OBJECTIVE_ERROR
        extra["message"] = (
            f"The objective raised {type(error).__name__}: {error}; "
            "returning the best iterate seen."
        )
        extra["exception"] = error
    hist = np.asarray(carry.hist)[: min(nit, steps) + 1]
    result = make_result(
        x=unravel(fin["x"]),
        fun=float(carry.best_f),
        jac=unravel(fin["jac"]),
        nit=nit,
        nfev=int(carry.nfev),
        status=status,
        history=hist,
        method=method,
        hess_inv=fin["hess_inv"],
        n_fallback=int(n_fallback),
        n_rejected=int(fin["n_rejected"]),
        last_fun=float(carry.last_f),
        eval_history=np.asarray(carry.eval_hist)[: int(carry.nfev)],
        **extra,
    )
    _log_events(result)
    if verbose:
        print(
            f"optimus[{method}] {result.status.name}: {result.message} "
            f"(nit {result.nit}, nfev {result.nfev}, fun {result.fun:.6e})",
            flush=True,
        )
    return result


def finalize(carry: Carry, x_best, hess_inv, x0_flat, box: _Box | None) -> dict[str, Any]:
    """What a finished solve reports, for one problem or a batch of them (leading axis):
    the final ``status`` (a loop still running has used up its evaluations; no finite value
    at all is ``NO_FINITE_POINT`` after one evaluation and ``NONFINITE`` after more), ``x``
    (``x0`` when no finite point was found), ``jac`` and ``hess_inv`` in the caller's
    coordinates (with bounds :math:`\nabla_x f = \nabla_z f / h` and :math:`H_x = h H_z h`
    for the box half-widths :math:`h`), and ``n_rejected`` (the driver's retries of
    non-finite points plus the learned models' rejected trial points)."""
    status = np.asarray(carry.status)
    status = np.where(status == RUNNING, int(Status.MAX_EVALS), status)
    finite = np.isfinite(np.asarray(carry.best_f))
    none_found = np.where(
        np.asarray(carry.nfev) <= 1, int(Status.NO_FINITE_POINT), int(Status.NONFINITE)
    )
    status = np.where(finite, status, none_found)
    x = jnp.where(jnp.asarray(finite)[..., None], x_best, x0_flat)
    jac = carry.best_g
    h = None if box is None else 0.5 * (box.hi - box.lo)
    if h is not None:
        jac = jac / h
    if isinstance(hess_inv, Compact):  # an operator (one per problem of a batch)
        if hess_inv.P.ndim == 2:
            hess_inv = compact_operator(hess_inv, h)
        else:
            hess_inv = [
                compact_operator(jax.tree.map(lambda a, b=b: a[b], hess_inv), h)
                for b in range(hess_inv.P.shape[0])
            ]
    elif hess_inv is not None and h is not None:
        hess_inv = h[:, None] * hess_inv * h[None, :]
    n_rejected = np.asarray(carry.n_rejected) + np.asarray(getattr(carry.state, "n_reject", 0))
    return dict(status=status, x=x, jac=jac, hess_inv=hess_inv, n_rejected=n_rejected)


def _check_verbose(verbose: Any) -> int:
    """``False``/``0`` -> 0 (off), ``True`` -> every 10 iterations, ``k >= 1`` -> every k."""
    if verbose is True:
        return 10
    if verbose is False or verbose is None:
        return 0
    if isinstance(verbose, int | np.integer) and verbose >= 0:
        return int(verbose)
    raise ValueError(f"verbose must be a bool or a non-negative integer, got {verbose!r}")


def _log_events(res: OptimizeResult) -> None:
    """Report notable events of a finished solve on the ``optimus.solve`` logger."""
    name = res.method
    if res.n_fallback:
        logger.info(
            "%s: the safeguard replaced %d learned step(s) by a safe gradient step",
            name,
            res.n_fallback,
        )
    if res.n_rejected:
        logger.info(
            "%s: %d trial point(s) rejected (non-finite objective or gradient) and retried",
            name,
            res.n_rejected,
        )
    if res.status in (Status.NONFINITE, Status.NO_FINITE_POINT, Status.OBJECTIVE_ERROR):
        logger.warning("%s stopped: %s", name, res.message)
    elif res.status == Status.LINESEARCH_FAILED:
        logger.info("%s stopped: %s", name, res.message)


def _solve_host(fun, jac, callback, x0_tree, box, max_evals, gtol, key, common, verbose=0):
    """Host loop: NumPy objectives (``jac=`` given) and per-iteration callbacks. Returns
    ``(carry, x_best, hess_inv, n_fallback, error)`` with ``error`` the exception that the
    objective raised (the loop then stops), else ``None``."""
    x0_flat, unravel = ravel_pytree(x0_tree)
    dtype = x0_flat.dtype
    shape = np.shape(x0_tree) if isinstance(x0_tree, jax.Array) else None
    z0 = x0_flat if box is None else box.to_z(x0_flat)
    to_x, project = _to_x_map(box, _build(common["method"], common["options"], common["params"]))
    if jac is None:
        vg_jax = jax.jit(jax.value_and_grad(lambda z: jnp.reshape(fun(unravel(to_x(z))), ())))

        def evaluate(z):
            return vg_jax(z)
    else:
        if shape is None:
            raise TypeError("with jac= the objective takes a flat NumPy array: x0 must be an array")
        if not (jac is True or callable(jac)):
            raise TypeError("jac must be None, True, or a callable returning the gradient")

        def evaluate(z):
            x = to_x(z)
            xn = np.asarray(x, dtype=np.float64).reshape(shape)
            try:
                if jac is True:
                    out = fun(xn)
                else:
                    out = (fun(xn), jac(xn))
            except Exception as e:  # the user's code failed: a clean stop, not a crash
                raise _ObjectiveError(e) from e
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("with jac=True, fun must return a (value, gradient) tuple")
            val, grad = out
            val = np.asarray(val)
            if val.size != 1:
                raise ValueError(f"fun must return a scalar, got an output of shape {val.shape}")
            grad = np.asarray(grad, dtype=np.float64)
            if grad.size != x.size:
                raise ValueError(
                    f"the gradient has shape {grad.shape}, expected {shape} (the shape of x0)"
                )
            g = jnp.asarray(grad.reshape(-1), dtype)
            if box is not None:
                g = box.grad_z(x, g, project)
            return jnp.asarray(float(val.reshape(())), dtype), g

    params = common["params"]
    static = dict(method=common["method"], options=common["options"], steps=common["steps"])
    dyn_options = common["dyn_options"]
    carry = _host_init(
        dyn_options=dyn_options, params=params, z0=z0, key=key, max_evals=max_evals, **static
    )
    gtol_a = jnp.asarray(gtol, dtype)
    error = None
    while int(carry.status) == RUNNING:
        nit_before = int(carry.state.nit)
        try:
            f, g = evaluate(carry.state.x)
        except _ObjectiveError as e:
            error = e.__cause__
            break
        carry = _host_step(
            dyn_options=dyn_options,
            params=params,
            carry=carry,
            f=f,
            g=g,
            max_evals=max_evals,
            project=project,
            gtol=gtol_a,
            **static,
        )
        nit = int(carry.state.nit)
        if verbose and ((nit > nit_before and nit % verbose == 0) or int(carry.status) != RUNNING):
            _print_progress(
                common["method"],
                nit,
                carry.nfev,
                carry.best_f,
                jnp.max(jnp.abs(carry.best_g), initial=0.0),
            )
        if callback is not None and nit > nit_before:
            inter = OptimizeResult(
                x=unravel(to_x(carry.best_x)),
                fun=float(carry.best_f),
                nit=nit,
                nfev=int(carry.nfev),
            )
            try:
                stop = callback(inter)
            except StopIteration:
                stop = True
            if _truthy_stop(stop) and int(carry.status) == RUNNING:
                carry = eqx.tree_at(
                    lambda c: c.status, carry, jnp.asarray(Status.CALLBACK_STOP, jnp.int32)
                )
    opt = _build(common["method"], common["options"], params, dyn_options)
    hess_inv = None if opt.hess_inv is None else opt.hess_inv(carry.state)
    return carry, to_x(carry.best_x), hess_inv, _n_fallback(carry.state), error


def _truthy_stop(stop: Any) -> bool:
    """A callback's return value asks to stop: ``True``, also as a NumPy or JAX boolean
    scalar (``None``, ``False`` and anything else continue)."""
    if stop is True:
        return True
    if isinstance(stop, np.bool_ | np.ndarray | jax.Array) and np.ndim(stop) == 0:
        return np.asarray(stop).dtype == bool and bool(stop)
    return False


class _ObjectiveError(Exception):
    """Internal wrapper: the user's objective raised (the cause is the original error)."""
