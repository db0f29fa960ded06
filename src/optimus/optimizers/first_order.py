"""First-order baselines (SGD, SGD with momentum, Adam) as reverse-communication optimizers.

Thin layers over optax: the state holds the optax state, the next point ``x`` and ``nit``.
Each update is one iteration ``x ← x + optax_update(g)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from optimus.optimizers.base import Optimizer


class FirstOrderState(eqx.Module):
    x: jax.Array
    opt_state: optax.OptState
    nit: jax.Array
    failed: jax.Array


def from_optax(name: str, tx: optax.GradientTransformation) -> Optimizer:
    """Wrap any optax transformation as a reverse-communication :class:`Optimizer`."""

    def init(x0: jax.Array, key: jax.Array | None = None) -> FirstOrderState:
        del key
        return FirstOrderState(
            x=x0,
            opt_state=tx.init(x0),
            nit=jnp.zeros((), jnp.int32),
            failed=jnp.zeros((), bool),
        )

    def update(state: FirstOrderState, value: jax.Array, grad: jax.Array) -> FirstOrderState:
        del value
        updates, opt_state = tx.update(grad, state.opt_state, state.x)
        return FirstOrderState(
            x=optax.apply_updates(state.x, updates),
            opt_state=opt_state,
            nit=state.nit + 1,
            failed=state.failed,
        )

    return Optimizer(name=name, init=init, update=update)


def sgd(learning_rate: float = 1e-2) -> Optimizer:
    """Gradient descent ``x ← x − η g``."""
    return from_optax("sgd", optax.sgd(learning_rate))


def sgdm(learning_rate: float = 1e-2, momentum: float = 0.9) -> Optimizer:
    """Heavy-ball momentum ``v ← μ v + g``, ``x ← x − η v``."""
    return from_optax("sgdm", optax.sgd(learning_rate, momentum=momentum))


def adam(learning_rate: float = 1e-1, b1: float = 0.9, b2: float = 0.999) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction."""
    return from_optax("adam", optax.adam(learning_rate, b1=b1, b2=b2))
