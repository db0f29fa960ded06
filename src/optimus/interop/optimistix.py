r"""Optimus as an :class:`optimistix.AbstractMinimiser` (optional dependency ``optimistix``).

``optimistix.minimise(fn, OptimusMinimiser(), y0)`` minimises ``fn(y, args)`` over a pytree
``y`` with an optimus method (default: the shipped, meta-trained Optimus network). Each
optimistix ``step`` is one evaluation of :math:`f` and :math:`\nabla f` at the current ``y``
followed by one step of the method's reverse-communication protocol
(:mod:`optimus.optimizers.base`) on the flattened ``y``.

Termination: after the step at :math:`y_t`, the solve stops when
:math:`\|\nabla f(y_t)\|_\infty \le` ``gtol``, or when both the step and the change of the
objective are small in optimistix's Cauchy sense,
:math:`\|\Delta y / (\mathrm{atol} + \mathrm{rtol}|y|)\| < 1` and
:math:`|\Delta f| / (\mathrm{atol} + \mathrm{rtol}|f|) < 1` (the criterion of
``optimistix.OptaxMinimiser``). The returned ``y`` is the best point evaluated (learned
methods are not monotone). A non-finite objective stops the solve with
``RESULTS.nonfinite``.

Importing this module imports optimistix; :mod:`optimus` itself only does so when
``optimus.OptimusMinimiser`` is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree

from optimus.optimizers import LEARNED_METHODS, check_method, get_optimizer

__all__ = ["OptimusMinimiser", "OptimusMinimiserState"]


class OptimusMinimiserState(eqx.Module):
    """Solver state: the method's protocol state over the flattened ``y`` and bookkeeping."""

    inner: Any
    step: jax.Array
    f_prev: jax.Array
    best_y: jax.Array
    best_f: jax.Array
    terminate: jax.Array
    nonfinite: jax.Array


class OptimusMinimiser(optx.AbstractMinimiser):
    r"""Minimise with an optimus method inside :func:`optimistix.minimise`.

    Args:
        method: any of :func:`optimus.methods` (default ``"optimus"``, the pretrained
            Transformer-based learned optimizer).
        rtol, atol: tolerances of the Cauchy termination criterion (module docstring).
        gtol: stop when :math:`\|\nabla f\|_\infty \le` ``gtol``.
        norm: norm of the Cauchy criterion (default :func:`optimistix.max_norm`).
        params: meta-parameters of a learned method (default: the shipped weights).
        **options: hyper-parameters of a classical method (``learning_rate``, ...), or
            update-rule fields of a learned one (e.g. ``restart=0.0``), as in
            :func:`optimus.minimize`.

    Without bounds the learned methods assume coordinates of order one (they were
    meta-trained in box-normalised coordinates): rescale ``y`` if it is far from that.

    Example::

        import jax.numpy as jnp, optimistix as optx
        from optimus import OptimusMinimiser

        fn = lambda y, args: jnp.sum((y["a"] - args) ** 2) + jnp.sum(y["b"] ** 2)
        y0 = {"a": jnp.zeros(3), "b": jnp.ones(2)}
        sol = optx.minimise(fn, OptimusMinimiser(), y0, args=0.5, max_steps=100)
        assert jnp.allclose(sol.value["a"], 0.5, atol=1e-3)
    """

    rtol: float
    atol: float
    gtol: float
    norm: Callable[[Any], jax.Array]
    params: Any
    method: str = eqx.field(static=True)
    options: tuple = eqx.field(static=True)

    def __init__(
        self,
        method: str = "optimus",
        *,
        rtol: float = 1e-6,
        atol: float = 1e-8,
        gtol: float = 1e-5,
        norm: Callable[[Any], jax.Array] = optx.max_norm,
        params: Any = None,
        **options: Any,
    ):
        method = check_method(method)
        if method in LEARNED_METHODS and params is None:
            from optimus.pretrained import load_pretrained

            params = load_pretrained(method)
        if method in LEARNED_METHODS and options:  # update-rule fields, as in minimize
            from optimus.solve import _with_rule_options

            params = _with_rule_options(method, params, options)
            options = {}
        get_optimizer(method, params=params, **options)  # validate now, not inside the solve
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.gtol = gtol
        self.norm = norm
        self.params = params
        self.options = tuple(sorted(options.items()))

    def _opt(self):
        return get_optimizer(self.method, params=self.params, **dict(self.options))

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> OptimusMinimiserState:
        del fn, args, options, aux_struct, tags
        flat, _ = ravel_pytree(y)
        dtype = f_struct.dtype
        flat = flat.astype(jnp.result_type(flat))
        return OptimusMinimiserState(
            inner=self._opt().init(flat, None),
            step=jnp.zeros((), jnp.int32),
            f_prev=jnp.asarray(jnp.finfo(dtype).max, dtype),
            best_y=flat,
            best_f=jnp.asarray(jnp.inf, dtype),
            terminate=jnp.asarray(False),
            nonfinite=jnp.asarray(False),
        )

    def step(self, fn, y, args, options, state: OptimusMinimiserState, tags):
        del options, tags
        (f, aux), grads = eqx.filter_value_and_grad(fn, has_aux=True)(y, args)
        x, unravel = ravel_pytree(y)
        g, _ = ravel_pytree(grads)
        g = g.astype(x.dtype)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        inner = eqx.tree_at(lambda s: s.x, state.inner, x)
        new_inner = self._opt().update(inner, f, g)
        # a non-finite evaluation leaves the optimizer where it was and ends the solve
        new_inner = jax.tree.map(lambda old, new: jnp.where(finite, new, old), inner, new_inner)
        better = finite & (f < state.best_f)
        new_x = new_inner.x
        gnorm = jnp.max(jnp.abs(g), initial=0.0)
        small_step = self.norm((new_x - x) / (self.atol + self.rtol * jnp.abs(x))) < 1
        small_df = jnp.abs(f - state.f_prev) / (self.atol + self.rtol * jnp.abs(f)) < 1
        terminate = ~finite | (gnorm <= self.gtol) | (small_step & small_df)
        new_state = OptimusMinimiserState(
            inner=new_inner,
            step=state.step + 1,
            f_prev=f.astype(state.f_prev.dtype),
            best_y=jnp.where(better, x, state.best_y),
            best_f=jnp.where(better, f, state.best_f).astype(state.best_f.dtype),
            terminate=terminate,
            nonfinite=~finite,
        )
        return unravel(new_x), new_state, aux

    def terminate(self, fn, y, args, options, state: OptimusMinimiserState, tags):
        del fn, y, args, options, tags
        result = optx.RESULTS.where(
            state.nonfinite, optx.RESULTS.nonfinite, optx.RESULTS.successful
        )
        return state.terminate, result

    def postprocess(self, fn, y, aux, args, options, state: OptimusMinimiserState, tags, result):
        del fn, args, options, tags, result
        _, unravel = ravel_pytree(y)
        have_best = jnp.isfinite(state.best_f)
        flat, _ = ravel_pytree(y)
        best = jnp.where(have_best, state.best_y, flat)
        return unravel(best), aux, {"best_fun": state.best_f, "optimus_steps": state.step}
