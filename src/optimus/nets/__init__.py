"""Networks of the learned optimizers: features → encoder → heads."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax

from optimus.nets.mlp import MLPNet
from optimus.nets.optimus import RULE_FIELDS, NetConfig, NetOutput, OptimusNet

__all__ = [
    "MLPNet",
    "NetConfig",
    "NetOutput",
    "OptimusNet",
    "build_net",
    "net_skeleton",
    "with_config",
    "with_rule",
]


def build_net(config: NetConfig, key: jax.Array) -> OptimusNet | MLPNet:
    """A freshly initialised network for ``config`` (meta-parameters from ``key``)."""
    if config.kind == "mlp":
        return MLPNet(config, key=key)
    return OptimusNet(config, key=key)


def net_skeleton(config: NetConfig) -> OptimusNet | MLPNet:
    """The network of ``config`` with ``jax.ShapeDtypeStruct`` leaves: its structure, leaf
    names, shapes and dtypes, traced abstractly (``equinox.filter_eval_shape``) instead of
    initialised. Initialising runs every random initialiser eagerly, a small XLA compilation
    each (about 70, 7-10 s on a 2-core CPU), which loading or re-configuring a network does
    not need."""
    return eqx.filter_eval_shape(build_net, config, jax.random.key(0))


def with_config(net: OptimusNet | MLPNet, config: NetConfig) -> OptimusNet | MLPNet:
    """``net``'s meta-parameters under another ``config`` with the same parameters (one that
    differs only in how the outputs are used, e.g. ``monotone`` or ``step_scale``; the config
    is a static field, so this rebuilds the network and refills its arrays in order)."""
    like = net_skeleton(config)
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(net))


def with_rule(net: OptimusNet | MLPNet, **fields: Any) -> OptimusNet | MLPNet:
    """``net`` with the update-rule fields ``fields`` (:data:`optimus.nets.optimus.RULE_FIELDS`)
    of its config changed, e.g. ``with_rule(net, restart=0.0)``. Raises ``ValueError`` for a
    field outside the update rule or a value the config refuses."""
    unknown = sorted(set(fields) - set(RULE_FIELDS))
    if unknown:
        raise ValueError(
            f"not an update-rule field: {unknown} (only update-rule options can be changed: "
            f"{', '.join(RULE_FIELDS)})"
        )
    return with_config(net, dataclasses.replace(net.config, **fields))
