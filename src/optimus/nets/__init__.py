"""Networks of the learned optimizers: features → encoder → heads."""

from __future__ import annotations

import jax

from optimus.nets.mlp import MLPNet
from optimus.nets.optimus import NetConfig, NetOutput, OptimusNet

__all__ = ["MLPNet", "NetConfig", "NetOutput", "OptimusNet", "build_net"]


def build_net(config: NetConfig, key: jax.Array) -> OptimusNet | MLPNet:
    """A freshly initialised network for ``config`` (meta-parameters from ``key``)."""
    if config.kind == "mlp":
        return MLPNet(config, key=key)
    return OptimusNet(config, key=key)
