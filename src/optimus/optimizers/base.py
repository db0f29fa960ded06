"""The optimizer protocol shared by every method in optimus.

Every optimizer is a pair of pure, jittable functions in *reverse-communication* form:

``init(x0, key) -> state``
    ``state.x`` is the first point the driver must evaluate (normally ``x0``).

``update(state, value, grad) -> state``
    ``value = f(state.x)`` and ``grad = ∇f(state.x)`` at the point the optimizer asked for.
    The returned state holds in ``state.x`` the next point to evaluate.

One call of ``update`` consumes exactly one objective+gradient evaluation, so evaluation
counting is uniform across methods: first-order and learned methods take one iteration per
evaluation; line-search methods (BFGS, L-BFGS) spend several evaluations per iteration and
advance ``state.nit`` only when a step is accepted. ``state.nit`` (int32 scalar) therefore
always counts *completed iterations*; ``state.failed`` (bool scalar) is raised when the
method cannot continue (e.g. a line search that cannot find a decrease).

Non-finite evaluations are the driver's business (:func:`optimus.minimize`): a method with
``uses_line_search`` receives a non-finite trial point as ``value = +inf`` (gradient zeroed)
and must shrink its step; any other method never sees one: the driver rejects the point and
overwrites ``state.x`` with the point half-way back to the last accepted one, so ``update``
must treat ``state.x`` as "the point that was evaluated" and nothing else as a cached copy of
it. The exception is a state whose ``handles_nonfinite`` (bool scalar) is true: the driver
then passes the non-finite evaluation to ``update`` (the smoothing layer skips such a
sample). Learned methods count the network steps their safeguard replaced in
``state.n_fallback``. With bounds, projected methods' pending point is clipped into the box
by the driver, or by ``state.project(lo, hi)`` when the state has one.

States are pytrees whose shapes and dtypes never change across calls, so the whole solve runs
in one ``jax.lax.while_loop`` without recompilation. ``hess_inv(state)``, when a method has
one, returns its current inverse-Hessian estimate / preconditioner ``B``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp

Array = jax.Array


class WrapperState(eqx.Module):
    """Base of the states of layers around another method's state (``inner``): the step
    acceptance and the smoothing phase. Forwards what the driver reads from the inner state
    (``t``, ``failed``, ``n_fallback``, ``B``); subclasses define ``inner``, ``x`` and
    ``nit``."""

    @property
    def t(self) -> Array:
        return self.inner.t

    @property
    def failed(self) -> Array:
        return self.inner.failed

    @property
    def n_fallback(self) -> Array:
        return getattr(self.inner, "n_fallback", jnp.zeros((), jnp.int32))

    @property
    def B(self) -> Array | None:
        return getattr(self.inner, "B", None)


State = Any


class InitFn(Protocol):
    def __call__(self, x0: Array, key: Array | None = None) -> State: ...


class UpdateFn(Protocol):
    def __call__(self, state: State, value: Array, grad: Array) -> State: ...


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A method in reverse-communication form (see the module docstring).

    Attributes:
        name: registry name, e.g. ``"bfgs"``.
        init: ``init(x0, key) -> state``.
        update: ``update(state, value, grad) -> state``.
        hess_inv: optional ``hess_inv(state) -> (n, n) array``.
        uses_line_search: True when one iteration may take several evaluations.
    """

    name: str
    init: InitFn
    update: UpdateFn
    hess_inv: Callable[[State], Array] | None = None
    uses_line_search: bool = False
