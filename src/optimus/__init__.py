"""Optimus: Transformer-based learned optimization in JAX.

Public API::

    optimus.minimize(fun, x0, method="optimus", steps=100, ...)  -> OptimizeResult
    optimus.minimize_batch(fun, x0s, args, ...)                  -> BatchOptimizeResult
                                       (B related problems in one compiled, vmapped solve)
    optimus.methods()                                            -> available method names
    optimus.load_pretrained(name), optimus.save_params / load_params
    optimus.functions                                            -> benchmark test functions
    optimus.optax.optimus(...)      -> optax transformation, a drop-in for optax.lbfgs
    optimus.scipy_method            -> scipy.optimize.minimize(..., method=optimus.scipy_method)
    optimus.OptimusMinimiser(...)   -> optimistix.minimise(fn, OptimusMinimiser(), y0)
                                       (imports optimistix only when first used)
"""

from __future__ import annotations

from typing import Any

from optimus import functions, optax
from optimus.batch import BatchOptimizeResult, minimize_batch
from optimus.interop.scipy import scipy_method
from optimus.optimizers import METHODS, Optimizer, get_optimizer
from optimus.pretrained import load_pretrained
from optimus.result import OptimizeResult, Status
from optimus.serialization import load_params, save_params
from optimus.solve import minimize

__version__ = "0.1.0"

__all__ = [
    "BatchOptimizeResult",
    "OptimizeResult",
    "Optimizer",
    "Status",
    "functions",
    "get_optimizer",
    "load_params",
    "load_pretrained",
    "methods",
    "minimize",
    "minimize_batch",
    "optax",
    "save_params",
    "scipy_method",
]


def methods() -> tuple[str, ...]:
    """Names accepted by ``minimize(method=...)``."""
    return METHODS


def __getattr__(name: str) -> Any:
    # optimistix is an optional dependency: import it only when OptimusMinimiser is used
    if name == "OptimusMinimiser":
        try:
            from optimus.interop.optimistix import OptimusMinimiser
        except ModuleNotFoundError as e:
            if e.name not in ("optimistix", "lineax"):
                raise
            raise ImportError(
                "optimus.OptimusMinimiser needs the optional dependency optimistix: "
                "pip install 'optimus-lopt[optimistix]'"
            ) from e
        return OptimusMinimiser
    raise AttributeError(f"module 'optimus' has no attribute {name!r}")
