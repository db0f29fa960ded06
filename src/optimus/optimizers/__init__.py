"""Optimizers in reverse-communication form (see :mod:`optimus.optimizers.base`) and the
registry of method names used by :func:`optimus.minimize`."""

from __future__ import annotations

from typing import Any

from optimus.optimizers.base import Optimizer
from optimus.optimizers.first_order import adam, from_optax, sgd, sgdm
from optimus.optimizers.learned import learned
from optimus.optimizers.quasi_newton import bfgs, lbfgs

__all__ = [
    "LEARNED_METHODS",
    "METHODS",
    "Optimizer",
    "adam",
    "bfgs",
    "from_optax",
    "get_optimizer",
    "lbfgs",
    "learned",
    "sgd",
    "sgdm",
]

_CLASSICAL = {"bfgs": bfgs, "lbfgs": lbfgs, "adam": adam, "sgd": sgd, "sgdm": sgdm}
LEARNED_METHODS = ("optimus", "optimus-noprecond", "mlp")
METHODS = LEARNED_METHODS + tuple(_CLASSICAL)


def check_method(method: str) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"unknown method {method!r}; available methods: {', '.join(METHODS)}")
    return method.lower()


def check_learned_params(method: str, net: Any) -> None:
    """Raise a clear error when ``net`` is not a network suitable for ``method``."""
    cfg = getattr(net, "config", None)
    kind = getattr(cfg, "kind", None)
    if kind is None or not callable(net):
        raise TypeError(
            f"params for method {method!r} must be a network built by optimus.nets.build_net "
            f"or loaded with optimus.load_params / optimus.load_pretrained; got {type(net)}"
        )
    want_kind = "mlp" if method == "mlp" else "optimus"
    if kind != want_kind:
        raise ValueError(f"method {method!r} needs a {want_kind!r} network, got a {kind!r} one")
    if method == "optimus" and not cfg.precondition:
        raise ValueError(
            "method 'optimus' needs a network with precondition=True; use "
            "'optimus-noprecond' for a network trained without the preconditioner"
        )
    if method == "optimus-noprecond" and cfg.precondition:
        raise ValueError("method 'optimus-noprecond' needs a network with precondition=False")


def learned_method_of(net: Any) -> str:
    """The learned method a network runs as: ``"mlp"``, ``"optimus"`` (with the
    preconditioner) or ``"optimus-noprecond"``."""
    cfg = getattr(net, "config", None)
    if getattr(cfg, "kind", None) == "mlp":
        return "mlp"
    return "optimus" if getattr(cfg, "precondition", False) else "optimus-noprecond"


def load_learned_file(path: Any, method: str | None = None) -> tuple[Any, str]:
    """Load a parameter file (``optimus.save_params``) for a learned method: ``method``, or
    the one its network belongs to (:func:`learned_method_of`) when None. Returns the
    network and the method; raises ``ValueError`` naming the file when it cannot be read or
    does not fit the method (for the benchmarks' ``--params-dir``)."""
    from optimus.serialization import load_params

    try:
        net = load_params(path)[0]
        method = method or learned_method_of(net)
        check_learned_params(method, net)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        what = f"for method {method!r}" if method else "as learned-optimizer weights"
        raise ValueError(f"cannot use {path} {what}: {e}") from None
    return net, method


def get_optimizer(method: str, params: Any = None, **options: Any) -> Optimizer:
    """Build the optimizer registered as ``method``.

    Classical methods take their hyper-parameters from ``options`` (e.g. ``learning_rate``
    for ``adam``, ``memory`` for ``lbfgs``); learned methods take their network from ``params``.
    """
    method = check_method(method)
    if method in LEARNED_METHODS:
        if options:
            raise ValueError(f"method {method!r} takes no options, got {sorted(options)}")
        check_learned_params(method, params)
        return learned(params, name=method)
    if params is not None:
        raise ValueError(f"params= is only used by learned methods {LEARNED_METHODS}")
    try:
        return _CLASSICAL[method](**options)
    except TypeError as e:
        raise ValueError(f"invalid options for method {method!r}: {e}") from None
