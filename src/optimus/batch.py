r"""Many related problems in one compiled solve: :func:`minimize_batch`.

Practitioners rarely solve one problem: they fit a pose per frame, a calibration per camera,
a trajectory per start state. :func:`minimize_batch` solves ``B`` problems of the same shape
at once, ``jax.vmap`` of the whole jitted solve of :func:`optimus.minimize` over a leading
batch axis of the starting points and of the per-problem data ``args``:

.. math:: x_b^\star \approx \arg\min_x f(x;\ a_b), \qquad b = 1, \dots, B.

Every problem keeps its own optimizer state, step acceptance, budget and termination: under
``vmap`` the ``lax.while_loop`` runs until the last problem stops, and a problem that has
stopped is carried along unchanged (its later evaluations are computed and discarded, so a
batch costs what its slowest member costs). Each problem's result is the one
:func:`optimus.minimize` returns for it, up to floating-point rounding: XLA may order a
batched reduction differently from an unbatched one, and iterative optimisation can amplify
a last-bit difference along a trajectory (see *Determinism* in :func:`optimus.minimize`).

What it buys is throughput: one compilation and one device loop for the whole batch instead
of ``B`` calls, each paying Python dispatch and an optimizer step that is too small to keep
the processor busy (``scripts/bench_batch.py`` measures the ratio on this machine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optimus.result import OptimizeResult, Status, make_result
from optimus.solve import (
    Uncached,
    _as_float_tree,
    _check_scalar_output,
    _parse_bounds,
    box_options,
    finalize,
    fit_memory,
    fresh_jit,
    prepare_method,
    solve_core,
    split_objective,
)

logger = logging.getLogger("optimus.batch")

__all__ = ["BatchOptimizeResult", "minimize_batch"]


class BatchOptimizeResult(OptimizeResult):
    """Result of :func:`minimize_batch`: the fields of :class:`optimus.OptimizeResult` with a
    leading batch axis of length ``B``.

    ``x`` and ``jac`` have the structure of the batched ``x0``; ``fun``, ``nit``, ``nfev``,
    ``njev``, ``success``, ``status`` (integer :class:`optimus.Status` codes), ``last_fun``,
    ``n_fallback`` and ``n_rejected`` are arrays of shape ``(B,)``; ``message`` is a list of
    ``B`` strings; ``history`` is ``(B, steps + 1)`` and ``eval_history`` ``(B, max_evals)``,
    padded with NaN after each problem's own ``nit + 1`` and ``nfev`` entries; ``hess_inv``,
    where the method has one, is ``(B, n, n)`` (a list of ``B`` operators when it was held in
    compact form). ``result(b)`` gives problem ``b`` as an
    ordinary :class:`optimus.OptimizeResult`, ``results()`` all of them.
    """

    @property
    def batch_size(self) -> int:
        """The number of problems ``B``."""
        return int(np.shape(self.fun)[0])

    def result(self, b: int) -> OptimizeResult:
        """Problem ``b`` as the :class:`optimus.OptimizeResult` :func:`optimus.minimize`
        would return (histories trimmed to its own length)."""
        size = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or not -size <= b < size:
            raise IndexError(f"problem index {b!r} out of range for a batch of {size}")
        b = int(b) % size
        extra = {}
        if "hess_inv" in self:
            extra["hess_inv"] = self.hess_inv[b]
        nit, nfev = int(self.nit[b]), int(self.nfev[b])
        return make_result(
            x=jax.tree.map(lambda a: a[b], self.x),
            fun=float(self.fun[b]),
            jac=jax.tree.map(lambda a: a[b], self.jac),
            nit=nit,
            nfev=nfev,
            status=Status(int(self.status[b])),
            history=self.history[b, : min(nit, self.history.shape[1] - 1) + 1],
            method=self.method,
            n_fallback=int(self.n_fallback[b]),
            n_rejected=int(self.n_rejected[b]),
            last_fun=float(self.last_fun[b]),
            eval_history=self.eval_history[b, :nfev],
            **extra,
        )

    def results(self) -> list[OptimizeResult]:
        """Every problem's :class:`optimus.OptimizeResult`, in batch order."""
        return [self.result(b) for b in range(self.batch_size)]


def _batch_size(tree: Any, what: str) -> int | None:
    """The common leading axis of the array leaves of ``tree`` (None: no array leaves)."""
    sizes = set()
    for leaf in jax.tree_util.tree_leaves(tree):
        if eqx.is_array(leaf):
            if np.ndim(leaf) == 0:
                raise ValueError(
                    f"{what}: every array needs a leading batch axis, got a scalar array "
                    "(data shared by all problems belongs in fun's closure)"
                )
            sizes.add(int(np.shape(leaf)[0]))
    if len(sizes) > 1:
        raise ValueError(f"{what}: the arrays' leading (batch) axes differ: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _solve_batch_impl(
    fun, args, x0_tree, box, gtol, key, params, dyn_options, method, options, steps, max_evals
):
    # method / options / steps / max_evals are Python values: static under filter_jit; so are
    # fun's and args' non-array leaves. Arrays in fun are shared, arrays in args are batched.
    args_dyn, args_static = eqx.partition(args, eqx.is_array)

    def one(x0_b, args_dyn_b):
        args_b = eqx.combine(args_dyn_b, args_static)

        def objective(x):
            return fun(x, *args_b)

        return solve_core(
            objective,
            method,
            options,
            steps,
            max_evals,
            0,
            dyn_options,
            params,
            x0_b,
            box,
            gtol,
            key,
        )

    return jax.vmap(one)(x0_tree, args_dyn)


_solve_batch = eqx.filter_jit(_solve_batch_impl)


def minimize_batch(
    fun: Callable[..., Any],
    x0: Any,
    args: Sequence[Any] = (),
    *,
    method: str = "optimus",
    steps: int = 100,
    max_evals: int | None = None,
    bounds: Any = None,
    key: jax.Array | None = None,
    params: Any = None,
    gtol: float = 1e-5,
    options: dict[str, Any] | None = None,
) -> BatchOptimizeResult:
    r"""Minimize ``B`` problems ``fun(x, *args_b)`` at once, ``b = 0 … B-1``.

    Args:
        fun: objective ``fun(x, *args) -> scalar``, JAX-traceable, where ``x`` has the
            structure of one problem's starting point and ``args`` holds one problem's data.
            Data shared by every problem goes in its closure (arrays inside an
            ``equinox.Module`` objective are traced, not baked into the compiled loop).
        x0: starting points: an array of shape ``(B, ...)`` or a pytree whose every leaf has
            the leading batch axis ``B`` (finite, floating point, one dtype).
        args: a tuple of per-problem data: every array leaf (JAX or NumPy) carries the
            leading batch axis ``B``; other leaves (Python numbers, strings) are shared
            constants, part of the compiled loop.
        method, steps, max_evals, key, params, gtol, options: as in
            :func:`optimus.minimize`, applied to every problem.
        bounds: as in :func:`optimus.minimize`, one box shared by every problem (scalars, or
            arrays the size of one problem).

    Returns:
        :class:`BatchOptimizeResult`: the fields of :func:`optimus.minimize`'s result with a
        leading batch axis; ``result(b)`` is problem ``b``'s own result.

    Raises:
        ValueError, TypeError: invalid arguments, batch axes that disagree, an objective that
            is not a traceable scalar function.

    Objectives that fail behave per problem as in :func:`optimus.minimize` (a non-finite
    value is rejected and retried; no finite point at all gives ``NONFINITE`` or
    ``NO_FINITE_POINT`` for that problem only). There is no NumPy (``jac=``) path, no
    ``callback`` and no ``verbose`` output: the batch is one compiled loop.

    Example::

        import jax
        import jax.numpy as jnp
        import optimus

        def fit(x, target):  # one problem: x of shape (10,), its own target
            return jnp.sum((x - target) ** 2) + 0.1 * jnp.sum(jnp.sin(5 * x))

        targets = jax.random.normal(jax.random.key(0), (64, 10))
        res = optimus.minimize_batch(fit, jnp.zeros((64, 10)), (targets,), bounds=(-4, 4))
        assert res.x.shape == (64, 10) and res.fun.shape == (64,) and res.success.all()
        best = res.result(0)  # problem 0 as an ordinary OptimizeResult
    """
    method, steps, max_evals, params, options_key, dyn_options = prepare_method(
        fun, method, steps, max_evals, gtol, params, options
    )
    if not isinstance(args, tuple | list):
        raise TypeError(
            f"args must be a tuple of per-problem data (like scipy's args), got "
            f"{type(args).__name__}; wrap a single array as (a,)"
        )
    args = tuple(
        jax.tree.map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, arg)
        for arg in args
    )
    x0_tree = _as_float_tree(x0)
    size = _batch_size(x0_tree, "x0")
    if size is None or size < 1:
        raise ValueError("x0 needs a leading batch axis of length >= 1")
    size_args = _batch_size(args, "args")
    if size_args is not None and size_args != size:
        raise ValueError(
            f"args have a batch axis of length {size_args}, x0 one of length {size}: every "
            "array in args needs the same leading axis as x0"
        )
    x0_first = jax.tree.map(lambda a: a[0], x0_tree)
    flat_first, unravel = ravel_pytree(x0_first)
    if flat_first.size == 0:
        raise ValueError("x0 has no elements per problem")
    args_first = jax.tree.map(lambda a: a[0] if eqx.is_array(a) else a, args)
    _check_scalar_output(lambda x: fun(x, *args_first), x0_first)
    x0_flat = jax.vmap(lambda t: ravel_pytree(t)[0])(x0_tree)
    box = _parse_bounds(bounds, flat_first)
    if box is not None:
        x0_flat = jnp.clip(x0_flat, box.lo, box.hi)
        x0_tree = jax.vmap(unravel)(x0_flat)
    options_key = box_options(method, options_key, box)
    params = fit_memory(params, flat_first.size, min(steps, max_evals), options)
    logger.debug(
        "minimize_batch: method=%s B=%d n=%d dtype=%s steps=%d max_evals=%d",
        method,
        size,
        flat_first.size,
        x0_flat.dtype,
        steps,
        max_evals,
    )
    fun_dyn, fun_static = split_objective(fun)
    solve = _solve_batch
    if isinstance(fun_static, Uncached):  # compiled for this call only (split_objective)
        solve = fresh_jit(_solve_batch_impl, jit=eqx.filter_jit)
    carry, x_best, hess_inv, n_fallback = solve(
        eqx.combine(fun_dyn, fun_static),
        args,
        x0_tree,
        box,
        jnp.asarray(gtol, x0_flat.dtype),
        key,
        params,
        dyn_options,
        method,
        options_key,
        steps,
        max_evals,
    )
    fin = finalize(carry, x_best, hess_inv, x0_flat, box)
    status = fin["status"].astype(np.int32)
    fun_b = np.asarray(carry.best_f)
    nit = np.asarray(carry.state.nit).astype(np.int64)
    nfev = np.asarray(carry.nfev).astype(np.int64)
    success = np.array([Status(int(s)).success for s in status]) & np.isfinite(fun_b)
    fields = dict(
        x=jax.vmap(unravel)(fin["x"]),
        fun=fun_b,
        jac=jax.vmap(unravel)(fin["jac"]),
        nit=nit,
        nfev=nfev,
        njev=nfev.copy(),
        success=success,
        status=status,
        message=[Status(int(s)).message for s in status],
        history=np.asarray(carry.hist),
        eval_history=np.asarray(carry.eval_hist),
        method=method,
        n_fallback=np.asarray(n_fallback).astype(np.int64),
        n_rejected=np.asarray(fin["n_rejected"]).astype(np.int64),
        last_fun=np.asarray(carry.last_f),
    )
    if fin["hess_inv"] is not None:
        fields["hess_inv"] = fin["hess_inv"]
    result = BatchOptimizeResult(fields)
    if not success.all():
        failed = [Status(int(s)).name for s in status[~success]]
        names, counts = np.unique(failed, return_counts=True)
        logger.warning(
            "%s: %d of %d problems did not succeed (%s; see result.status)",
            method,
            int(np.sum(~success)),
            size,
            ", ".join(f"{c} {n}" for n, c in zip(names, counts, strict=True)),
        )
    return result
