r"""The per-coordinate MLP learned optimizer (Adafactor-MLP style, Metz et al. 2022): the
learned baseline.

Each coordinate is processed independently by the same small MLP on its features and the
global features: :math:`(d_i, \mu_i) = \mathrm{MLP}([\phi_{t,i}; \gamma_t])`, plus the same
linear skip to the Adam direction as Optimus. Coordinates interact only through the feature
normalisation and the global features; the global log step :math:`\sigma` and the
quasi-Newton gate :math:`\lambda` are linear functions of the global features alone. It gets
the same features as Optimus (so the comparison isolates attention and the preconditioner).
No attention, no preconditioner: :math:`x_{t+1} = x_t - (a \odot d + \lambda q)` with
:math:`a_i = \exp(c_1 \mu_i + \sigma)\,\ell` (:math:`\ell` the Barzilai–Borwein step length).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.nets.encoder import Dense
from optimus.nets.features import N_COORD_FEATURES, N_GLOBAL_FEATURES
from optimus.nets.optimus import INIT_LAM, INIT_LOG_STEP, NetConfig, NetOutput, StepHead


class MLPNet(eqx.Module):
    """Per-coordinate MLP learned optimizer (see the module docstring)."""

    step: StepHead
    sigma_head: Dense
    config: NetConfig = eqx.field(static=True)

    def __init__(self, config: NetConfig, *, key: jax.Array):
        ks, kg = jax.random.split(key)
        self.step = StepHead(N_COORD_FEATURES + N_GLOBAL_FEATURES, config.hidden, key=ks)
        head = Dense(N_GLOBAL_FEATURES, 2, key=kg, scale=0.01)
        self.sigma_head = eqx.tree_at(
            lambda m: m.bias, head, jnp.asarray([INIT_LOG_STEP, INIT_LAM])
        )
        self.config = config

    def __call__(self, feats: jax.Array, glob: jax.Array, mask: jax.Array) -> NetOutput:
        gb = jnp.broadcast_to(glob, (feats.shape[0], glob.shape[0]))
        d, mu = self.step(jnp.concatenate([feats, gb], axis=1), feats)
        zero = jnp.zeros((), feats.dtype)
        sigma, lam_logit = self.sigma_head(glob)
        return NetOutput(
            d=jnp.where(mask, d, 0),
            mu=jnp.where(mask, mu, 0),
            sigma=sigma,
            u=jnp.zeros_like(d),
            rho=jnp.ones((), feats.dtype) + zero,
            lam=2 * jax.nn.sigmoid(lam_logit) + zero,
        )
