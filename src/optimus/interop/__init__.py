"""Adapters that put optimus where users already are.

* :mod:`optimus.interop.optax`: ``optimus.optax.optimus(...)``, an optax
  ``GradientTransformationExtraArgs`` (drop-in for ``optax.lbfgs`` code).
* :mod:`optimus.interop.scipy`: ``optimus.scipy_method`` for
  ``scipy.optimize.minimize(..., method=optimus.scipy_method)``.
* :mod:`optimus.interop.optimistix`: ``optimus.OptimusMinimiser`` for
  ``optimistix.minimise`` (optional dependency; imported only when used).
"""
