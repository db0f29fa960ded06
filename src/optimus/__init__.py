"""Optimus: Transformer-based learned optimization in JAX.

Public API::

    optimus.minimize(fun, x0, method="optimus", steps=100, ...)  -> OptimizeResult
    optimus.methods()                                            -> available method names
    optimus.load_pretrained(name), optimus.save_params / load_params
    optimus.functions                                            -> benchmark test functions
"""

from __future__ import annotations

from optimus import functions
from optimus.optimizers import METHODS, Optimizer, get_optimizer
from optimus.pretrained import load_pretrained
from optimus.result import OptimizeResult, Status
from optimus.serialization import load_params, save_params
from optimus.solve import minimize

__version__ = "0.1.0"

__all__ = [
    "OptimizeResult",
    "Optimizer",
    "Status",
    "functions",
    "get_optimizer",
    "load_params",
    "load_pretrained",
    "methods",
    "minimize",
    "save_params",
]


def methods() -> tuple[str, ...]:
    """Names accepted by ``minimize(method=...)``."""
    return METHODS
