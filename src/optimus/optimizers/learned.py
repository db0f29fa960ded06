r"""Learned optimizers: a network plus meta-parameters turned into an :class:`Optimizer`.

One iteration, given :math:`f_t = f(x_t)` and :math:`g_t = \nabla f(x_t)`:

1. update the accumulators and the secant memory and build features
   (:mod:`optimus.nets.features`): the secant pair :math:`s = x_t - x_{t-1}`,
   :math:`y = g_t - g_{t-1}`, :math:`B_t y` and the L-BFGS direction :math:`H_t g_t`;
2. run the network: direction :math:`d`, log-magnitudes :math:`\mu`, global log step
   :math:`\sigma`, rank-one vector :math:`u`, damping :math:`\rho`;
3. preconditioner (Optimus only): :math:`B_{t+1} = \rho B_t + (1-\rho) I + u u^\top`;
4. step: :math:`x_{t+1} = x_t - B_{t+1} (a \odot d + \lambda q)` with
   :math:`a = \exp(c_1\mu + \sigma)\,\ell` and the quasi-Newton gate
   :math:`\lambda \in (0, 2)`; :math:`\ell` is the RMS length of the Barzilai–Borwein step
   (:func:`optimus.nets.features.reference_length`), so the Adam-like term is a learned
   fraction of a secant step length and vanishes as the iterate converges.

Safeguard: a non-finite proposed step is replaced by no step, :math:`B` is reset to the
identity and ``n_fallback`` counts it.

The functions :func:`learned_init` and :func:`learned_update` take the network explicitly, so
meta-training can ``vmap`` them over perturbed meta-parameters; :func:`learned` closes over a
network to give the plain :class:`Optimizer` interface. A ``mask`` (padding) makes a problem
padded to a size bucket behave exactly like the unpadded one on its valid coordinates.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.nets import features as F
from optimus.nets.optimus import MAG_SCALE, precondition_update
from optimus.optimizers.base import Optimizer


class LearnedState(eqx.Module):
    x: jax.Array  # next point to evaluate
    x0: jax.Array
    x_prev: jax.Array
    g_prev: jax.Array
    f0: jax.Array
    f_prev: jax.Array
    acc: F.Accumulators
    B: jax.Array | None  # (N, N) preconditioner, None when the network does not precondition
    mask: jax.Array
    t: jax.Array
    nit: jax.Array
    failed: jax.Array
    n_fallback: jax.Array


def uses_preconditioner(net) -> bool:
    cfg = net.config
    return cfg.kind == "optimus" and cfg.precondition


def learned_init(net, x0: jax.Array, mask: jax.Array | None = None) -> LearnedState:
    """Initial state for ``x0`` of shape ``(N,)``; ``mask`` marks valid coordinates."""
    if mask is None:
        mask = jnp.ones(x0.shape, bool)
    dtype = x0.dtype
    zero_f = jnp.zeros((), dtype)
    B = jnp.eye(x0.shape[0], dtype=dtype) if uses_preconditioner(net) else None
    return LearnedState(
        x=x0,
        x0=x0,
        x_prev=x0,
        g_prev=jnp.zeros_like(x0),
        f0=zero_f,
        f_prev=zero_f,
        acc=F.init_accumulators(x0),
        B=B,
        mask=mask,
        t=jnp.zeros((), jnp.int32),
        nit=jnp.zeros((), jnp.int32),
        failed=jnp.zeros((), bool),
        n_fallback=jnp.zeros((), jnp.int32),
    )


def learned_update(net, state: LearnedState, value: jax.Array, grad: jax.Array) -> LearnedState:
    """One learned step at ``state.x`` given ``value = f(state.x)``, ``grad = ∇f(state.x)``."""
    mask = state.mask
    x = state.x
    dtype = x.dtype
    value = jnp.asarray(value, dtype)
    g = jnp.where(mask, grad.astype(dtype), 0)
    first = state.t == 0
    f0 = jnp.where(first, value, state.f0)
    f_prev = jnp.where(first, value, state.f_prev)
    g_prev = jnp.where(first, g, state.g_prev)
    s = x - state.x_prev
    y = g - g_prev
    acc = F.update_accumulators(state.acc, g, s, y)
    By = y if state.B is None else state.B @ y
    dx = x - state.x0
    q = F.lbfgs_direction(g, acc.S, acc.Y)
    feats = F.coordinate_features(g, acc, s, y, By, dx, q, mask)
    glob = F.global_features(state.t, value, f_prev, f0, g, g_prev, s, y, dx, q, mask)
    out = net(feats, glob, mask)
    a = jnp.exp(jnp.clip(MAG_SCALE * out.mu + out.sigma, -30.0, 10.0)) * F.reference_length(
        g, s, y, mask
    )
    raw = (a * out.d + out.lam * q).astype(dtype)
    if state.B is None:
        B_new = None
        step = raw
    else:
        B_new = precondition_update(state.B, out.u.astype(dtype), out.rho.astype(dtype))
        step = B_new @ raw
    step = jnp.where(mask, step, 0)
    ok = jnp.all(jnp.isfinite(step))
    step = jnp.where(ok, step, 0)
    if B_new is not None:
        B_new = jnp.where(ok, B_new, jnp.eye(B_new.shape[0], dtype=dtype))
    return LearnedState(
        x=x - step,
        x0=state.x0,
        x_prev=x,
        g_prev=g,
        f0=f0,
        f_prev=value,
        acc=acc,
        B=B_new,
        mask=mask,
        t=state.t + 1,
        nit=state.nit + 1,
        failed=state.failed,
        n_fallback=state.n_fallback + (~ok).astype(jnp.int32),
    )


def learned(net, name: str = "optimus") -> Optimizer:
    """Wrap a network (with its meta-parameters) as a reverse-communication Optimizer."""

    def init(x0: jax.Array, key: jax.Array | None = None) -> LearnedState:
        del key
        return learned_init(net, x0)

    def update(state: LearnedState, value: jax.Array, grad: jax.Array) -> LearnedState:
        return learned_update(net, state, value, grad)

    hess_inv = (lambda s: s.B) if uses_preconditioner(net) else None
    return Optimizer(name=name, init=init, update=update, hess_inv=hess_inv)
