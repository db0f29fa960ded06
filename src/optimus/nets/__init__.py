"""Networks of the learned optimizers: features → encoder → heads."""

from __future__ import annotations

import jax

from optimus.nets.mlp import MLPNet
from optimus.nets.optimus import NetConfig, NetOutput, OptimusNet

__all__ = ["MLPNet", "NetConfig", "NetOutput", "OptimusNet", "build_net", "with_config"]


def build_net(config: NetConfig, key: jax.Array) -> OptimusNet | MLPNet:
    """A freshly initialised network for ``config`` (meta-parameters from ``key``)."""
    if config.kind == "mlp":
        return MLPNet(config, key=key)
    return OptimusNet(config, key=key)


def with_config(net: OptimusNet | MLPNet, config: NetConfig) -> OptimusNet | MLPNet:
    """``net``'s meta-parameters under another ``config`` with the same parameters (one that
    differs only in how the outputs are used, e.g. ``monotone`` or ``step_scale``; the config
    is a static field, so this rebuilds the network and refills its arrays in order)."""
    like = build_net(config, jax.random.key(0))
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(net))
