r"""Optimus as an optax ``GradientTransformationExtraArgs``: a drop-in for ``optax.lbfgs`` code.

:func:`optimus` wraps any optimus method (by default the shipped, meta-trained ``optimus``
network) as an optax transformation. One call of ``update`` is one step of the method's
reverse-communication protocol (:mod:`optimus.optimizers.base`): it receives the value
:math:`f_t = f(x_t)` and gradient :math:`g_t = \nabla f(x_t)` at the current parameters
:math:`x_t` and returns

.. math:: u_t = x_{t+1} - x_t,

so that ``optax.apply_updates(params, updates)`` moves to the next point :math:`x_{t+1}`
proposed by the method. For the learned Optimus method
:math:`x_{t+1} = x_t - B_{t+1}\,(a_t \odot d_t + \lambda_t q_t)` (see
:mod:`optimus.optimizers.learned`).

Like ``optax.lbfgs``, ``update`` needs the objective value: call it as
``update(grads, state, params, value=f)``; ``grad=`` and ``value_fn=`` are accepted as in
``optax.lbfgs`` (``value_fn`` is used once, on the first step, to check that it agrees with
``value``). The pytree of parameters is flattened internally into one vector of the
parameters' common dtype, which the state keeps; the state's shapes and dtypes never change
from step to step, so a jitted step compiles once.

Scale: without bounds the learned methods assume coordinates of order one (they were
meta-trained in box-normalised coordinates :math:`[-1, 1]^n`); parameters of neural networks
with standard initialisations are of that order. Cost: ``method="optimus"`` keeps a dense
:math:`n \times n` preconditioner and a dense BFGS inverse-Hessian estimate, so memory and
time grow as :math:`O(n^2)`: fine for a few thousand parameters, not for a large network (use
``method="optimus-noprecond"`` or ``method="mlp"``, whose costs are linear in :math:`n`,
there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from optimus.optimizers import LEARNED_METHODS, check_method, get_optimizer

__all__ = ["OptimusState", "optimus"]

logger = logging.getLogger(__name__)

#: above this many parameters ``method="optimus"`` logs a warning about its O(n²) cost
LARGE_N = 5000


class OptimusState(NamedTuple):
    """State of the :func:`optimus` transformation.

    Attributes:
        inner: the method's reverse-communication state over the flattened parameters
            (e.g. :class:`optimus.optimizers.learned.LearnedState`); ``inner.x`` is the point
            the method proposed last.
        value: a cached objective value at the next parameters for
            :func:`optax.value_and_grad_from_state`. Optimus never evaluates the objective
            itself, so this is always ``+inf``, which tells ``value_and_grad_from_state`` to
            evaluate ``value_fn`` (exactly one evaluation per step, as without it).
        grad: the matching cached gradient (zeros, same structure as the parameters).
        count: number of updates done (int32).
    """

    inner: Any
    value: jax.Array
    grad: Any
    count: jax.Array


def _leaf_dtype(tree: Any, what: str) -> jnp.dtype:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} is empty: it must contain at least one array")
    dtypes = {jnp.result_type(leaf) for leaf in leaves}
    if len(dtypes) > 1:
        names = sorted(str(d) for d in dtypes)
        raise TypeError(
            f"all leaves of {what} must share one dtype, got {names}; cast them first, e.g. "
            "jax.tree.map(lambda a: a.astype(jnp.float32), params)"
        )
    (dtype,) = dtypes
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what} must hold real floating-point arrays, got dtype {dtype}")
    return dtype


def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves)


def _agree(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a`` and ``b`` are the same objective value up to rounding (relative 1e-3)."""
    both_inf = jnp.isinf(a) & jnp.isinf(b) & (jnp.sign(a) == jnp.sign(b))
    close = jnp.abs(a - b) <= 1e-3 * jnp.maximum(jnp.abs(a), jnp.abs(b)) + 1e-30
    return both_inf | close | (jnp.isnan(a) & jnp.isnan(b))


def optimus(
    method: str = "optimus",
    *,
    params: Any = None,
    key: jax.Array | None = None,
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
    r"""An optax transformation running an optimus method (default: pretrained Optimus).

    ``update(grads, state, params, *, value, grad=None, value_fn=None, **extra_args)`` feeds
    the value :math:`f(x_t)` and the incoming updates (the gradient :math:`\nabla f(x_t)`,
    possibly transformed by earlier members of an :func:`optax.chain`) at
    :math:`x_t` = ``params`` to the method and returns the updates
    :math:`x_{t+1} - x_t` towards the method's next point, with the structure of ``params``.

    Args:
        method: any of :func:`optimus.methods` — the learned ``"optimus"`` (default),
            ``"optimus-noprecond"``, ``"mlp"``, or the classical ``"bfgs"``, ``"lbfgs"``,
            ``"adam"``, ``"sgd"``, ``"sgdm"``. Line-search methods (BFGS/L-BFGS) propose
            line-search trial points, so a step can move back; they count one ``update`` per
            evaluation.
        params: meta-parameters of a learned method (a network from
            :func:`optimus.load_params`); defaults to the shipped weights for ``method``.
            (Not the parameters being optimized: those are given to ``init``/``update``.)
        key: PRNG key handed to the method's ``init`` (no built-in method is random).
        **options: hyper-parameters of a classical method (``learning_rate``, ``memory``,
            ...), or update-rule fields of a learned one, as in :func:`optimus.minimize`.
            Learned methods run here with ``restart=0.0`` and ``smooth_rounds=0`` unless
            they are given: the parameters an optax loop ends with are the last point the
            method proposed, and the shipped models' restarts (which move a converged run
            elsewhere to spend its remaining budget) and smoothing phase (whose evaluations
            are random perturbations of a centre) would make that point worse than the best
            one seen. With the
            step acceptance of the shipped models the last point can still be a trial point
            that is about to be rejected; ``state.inner.x_best`` (flattened) is the best
            accepted one.

    Returns:
        An :class:`optax.GradientTransformationExtraArgs` whose state is an
        :class:`OptimusState`.

    Raises:
        ValueError / TypeError with an explanation when ``value`` is missing, when
        ``value_fn`` disagrees with ``value``, when the parameters mix dtypes or change
        structure, shape or dtype between ``init`` and ``update``.

    Example::

        import jax, jax.numpy as jnp, optax, optimus

        f = lambda p: jnp.sum((p["w"] - 0.5) ** 2) + (p["b"] + 0.2) ** 2
        p = {"w": jnp.zeros(3), "b": jnp.asarray(0.0)}
        tx = optimus.optax.optimus()
        state = tx.init(p)

        @jax.jit
        def step(p, state):
            value, grads = jax.value_and_grad(f)(p)
            updates, state = tx.update(grads, state, p, value=value)
            return optax.apply_updates(p, updates), state

        for _ in range(20):
            p, state = step(p, state)
        assert f(p) < 1e-6
    """
    method = check_method(method)
    if method in LEARNED_METHODS and params is None:
        from optimus.pretrained import load_pretrained

        params = load_pretrained(method)
    if method in LEARNED_METHODS:
        # update-rule options, as in optimus.minimize; an optax loop keeps the last point,
        # not the best one, so the restarts and the smoothing phase (whose evaluations are
        # perturbed points) are off unless asked for
        from optimus.solve import _with_rule_options

        params = _with_rule_options(method, params, {"restart": 0.0, "smooth_rounds": 0, **options})
        options = {}
    opt = get_optimizer(method, params=params, **options)

    def init_fn(tree: optax.Params) -> OptimusState:
        if tree is None:
            raise ValueError("optimus.optax.optimus().init needs the parameters, got None")
        dtype = _leaf_dtype(tree, "params")
        flat, unravel = ravel_pytree(tree)
        flat = flat.astype(dtype)
        dense = method == "optimus" and getattr(params.config, "qn_memory", 0) == 0
        if dense and flat.size > LARGE_N:
            logger.warning(
                "optimus.optax.optimus: %d parameters; method 'optimus' keeps a dense "
                "%d x %d preconditioner and BFGS and SR1 estimates (O(n^2) memory and time); "
                "pass qn_memory=<number of updates> for their compact form (O(n) per "
                "update, exact for that many; then the secant estimates freeze and the "
                "preconditioner is only damped), or consider method='optimus-noprecond' or "
                "'mlp' (both O(n)) for large models",
                flat.size,
                flat.size,
                flat.size,
            )
        return OptimusState(
            inner=opt.init(flat, key),
            value=jnp.asarray(jnp.inf, dtype),
            grad=unravel(jnp.zeros_like(flat)),
            count=jnp.zeros((), jnp.int32),
        )

    def update_fn(
        updates: optax.Updates,
        state: OptimusState,
        params: optax.Params | None = None,
        *,
        value: jax.typing.ArrayLike | None = None,
        grad: optax.Updates | None = None,
        value_fn: Callable[..., jax.typing.ArrayLike] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, OptimusState]:
        if not isinstance(state, OptimusState):
            raise TypeError(
                f"state must be the OptimusState returned by init, got {type(state).__name__}"
            )
        if value is None:
            raise ValueError(
                "optimus.optax.optimus needs the objective value at params, like optax.lbfgs: "
                "call update(grads, state, params, value=value), e.g. with "
                "value, grads = jax.value_and_grad(loss)(params)"
            )
        if params is None:
            raise ValueError(
                "optimus.optax.optimus needs the current parameters: "
                "call update(grads, state, params, value=value)"
            )
        want = _signature(state.grad)
        if _signature(params) != want:
            raise ValueError(
                "params do not match the state: structure, shapes or dtypes differ from the "
                "parameters given to init (re-run init after changing the model or its dtype)"
            )
        if _signature(updates) != want:
            raise TypeError(
                "grads (updates) must have the structure, shapes and dtypes of params; got "
                f"{jax.tree_util.tree_structure(updates)} with dtypes "
                f"{sorted({str(jnp.result_type(a)) for a in jax.tree_util.tree_leaves(updates)})}"
                f" for params of dtype {state.value.dtype}"
            )
        if grad is not None and jax.tree_util.tree_structure(grad) != want[0]:
            raise ValueError("grad= must have the structure of params")
        dtype = state.value.dtype
        value = jnp.asarray(value)
        if value.shape != () or not (
            jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        ):
            raise TypeError(
                f"value must be a real scalar (the objective at params), got shape {value.shape} "
                f"and dtype {value.dtype}"
            )
        value = value.astype(dtype)
        x, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(updates)
        if value_fn is not None:
            # check once, on the first step, that value_fn computes the value it came with
            ref = jax.lax.cond(
                state.count == 0,
                lambda: jnp.asarray(value_fn(params, **extra_args)).astype(dtype).reshape(()),
                lambda: value,
            )
            # attached to x, which every method's output depends on (so it is never pruned)
            x = eqx.error_if(
                x,
                ~_agree(value, ref),
                "optimus.optax.optimus: value_fn(params) disagrees with value= (relative "
                "difference above 1e-3): value_fn must be the objective whose value at "
                "params is passed as value",
            )
        # the point actually evaluated is params (updates may have been rounded or changed)
        inner = eqx.tree_at(lambda s: s.x, state.inner, x)
        inner = opt.update(inner, value, g)
        new_updates = unravel((inner.x - x).astype(dtype))
        new_state = OptimusState(
            inner=inner, value=state.value, grad=state.grad, count=state.count + 1
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
