"""``optimus.optax``: Optimus as an optax transformation (see :mod:`optimus.interop.optax`).

``optimus.optax.optimus(...)`` returns an :class:`optax.GradientTransformationExtraArgs` that
drops into code written for ``optax.lbfgs``.
"""

from optimus.interop.optax import LARGE_N, OptimusState, optimus

__all__ = ["LARGE_N", "OptimusState", "optimus"]
