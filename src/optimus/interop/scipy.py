r"""Optimus as a custom method of :func:`scipy.optimize.minimize`.

``scipy.optimize.minimize(fun, x0, jac=..., method=optimus.scipy_method, options={...})``
runs :func:`optimus.minimize` (its host loop for NumPy objectives) and returns a plain
:class:`scipy.optimize.OptimizeResult`. scipy calls a callable ``method`` as
``method(fun, x0, args=args, jac=jac, hess=hess, hessp=hessp, bounds=bounds,
constraints=constraints, callback=callback, **options)``; :func:`scipy_method` is that
callable. Gradients: ``jac`` a callable, ``jac=True`` (``fun`` returns ``(value, grad)``), or
no ``jac`` when ``fun`` is written with ``jax.numpy`` (then JAX differentiates it). Finite
differences are not offered: a learned optimizer fed noisy finite-difference gradients is not
what it was trained for, and each would cost :math:`n` extra evaluations.

Computation runs in JAX's default precision: ``x0`` (float64 from scipy) is cast to float32
unless ``jax.enable_x64`` is on; the result's ``x`` is returned as a float64 NumPy array.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import OptimizeResult as ScipyOptimizeResult

from optimus.result import Status

__all__ = ["SUPPORTED_OPTIONS", "scipy_method"]

#: the ``options={...}`` keys :func:`scipy_method` understands
SUPPORTED_OPTIONS: dict[str, str] = {
    "maxiter": "iteration budget (default 100); alias: steps",
    "steps": "alias of maxiter",
    "maxfun": "objective+gradient evaluation budget (default 30 * maxiter); alias: max_evals",
    "max_evals": "alias of maxfun",
    "gtol": "stop when max |grad| <= gtol (default 1e-5; scipy's tol= sets it too)",
    "tol": "set by scipy.optimize.minimize(tol=...): used as gtol unless gtol is given",
    "optimizer": "optimus method name (default 'optimus'; see optimus.methods())",
    "params": "meta-parameters (network) of a learned optimizer (default: shipped weights)",
    "optimizer_options": "dict of hyper-parameters of a classical optimizer, e.g. learning_rate",
    "key": "PRNG key handed to the optimizer's init",
    "disp": "print a convergence message at the end (default False)",
    "return_all": "also return allvecs: x0, then the best iterate after every iteration",
}

STOP_ITERATION_STATUS = 99  # scipy's status when the callback raised StopIteration


def _pick(options: dict[str, Any], name: str, alias: str, default: Any) -> Any:
    if name in options and alias in options:
        raise ValueError(f"give only one of the options {name!r} and {alias!r} (aliases)")
    return options.get(name, options.get(alias, default))


def _callback_adapter(callback: Callable[..., Any] | None, allvecs: list | None):
    """Turn scipy's callback forms into optimus.minimize's (stop when it returns True).

    scipy passes ``intermediate_result`` (an OptimizeResult with ``x`` and ``fun``) to a
    callback whose only parameter has that name, and the current ``x`` otherwise; a return
    value is ignored and ``StopIteration`` stops the solve."""
    if callback is None and allvecs is None:
        return None, {}
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    flags = {"stopped": False}
    new_style = False
    if callback is not None:
        try:
            new_style = set(inspect.signature(callback).parameters) == {"intermediate_result"}
        except (TypeError, ValueError):
            new_style = False

    def wrapped(inter) -> bool:
        x = np.array(inter.x, dtype=np.float64)
        if allvecs is not None:
            allvecs.append(x.copy())
        if callback is None:
            return False
        try:
            if new_style:
                res = ScipyOptimizeResult(x=x, fun=float(inter.fun), nit=inter.nit, nfev=inter.nfev)
                callback(intermediate_result=res)
            else:
                callback(x)
        except StopIteration:
            flags["stopped"] = True
            return True
        return False

    return wrapped, flags


def _is_traceable(fun: Callable[..., Any], x0: jax.Array) -> bool:
    try:
        out = jax.eval_shape(fun, x0)
    except Exception:  # noqa: BLE001 - any failure to trace means "not a JAX function"
        return False
    return hasattr(out, "shape") and out.size == 1


def scipy_method(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    jac: Callable[..., Any] | bool | str | None = None,
    hess: Any = None,
    hessp: Any = None,
    bounds: Any = None,
    constraints: Any = (),
    callback: Callable[..., Any] | None = None,
    **options: Any,
) -> ScipyOptimizeResult:
    r"""A ``method=`` for :func:`scipy.optimize.minimize` that runs an optimus optimizer.

    The iteration is the one of the chosen optimus method (by default the pretrained
    Optimus: :math:`x_{t+1} = x_t - B_{t+1}(a_t \odot d_t + \lambda_t q_t)`, see
    :mod:`optimus.optimizers.learned`), run by :func:`optimus.minimize` for ``maxiter``
    iterations or ``maxfun`` evaluations, whichever comes first; it stops early when
    :math:`\|\nabla f(x)\|_\infty \le` ``gtol``.

    Args:
        fun: objective ``fun(x, *args) -> float``.
        x0: starting point (1-D array).
        args: extra arguments of ``fun`` and ``jac``.
        jac: gradient callable ``jac(x, *args)``; ``True`` when ``fun`` returns
            ``(value, grad)`` (scipy turns that into a callable before calling this
            method); or ``None`` when ``fun`` is JAX-traceable (``jax.numpy``), in which case
            JAX differentiates it. Finite-difference strings (``'2-point'``, ...) are
            refused with an explanation.
        hess, hessp: not used (a ``RuntimeWarning`` says so, as scipy does).
        bounds: ``scipy.optimize.Bounds``, a sequence of ``(lo, hi)`` pairs, or
            ``(lo, hi)``: the optimizer then works in box-normalised coordinates
            (recommended for the learned methods, which were meta-trained that way).
        constraints: not supported (a non-empty value raises ``ValueError``).
        callback: ``callback(intermediate_result)`` (an ``OptimizeResult`` with ``x``,
            ``fun``, ``nit``, ``nfev``; ``x`` is the best iterate so far) or legacy
            ``callback(xk)``, called after every iteration; raising ``StopIteration`` stops
            the solve (then ``success=False``, ``status=99``, as in scipy).
        **options: see :data:`SUPPORTED_OPTIONS`; any other key raises ``ValueError``.

    Returns:
        A :class:`scipy.optimize.OptimizeResult` with ``x`` (float64 ndarray, best iterate
        seen), ``fun``, ``jac``, ``nit``, ``nfev``, ``njev``, ``success``, ``status`` (an
        :class:`optimus.Status` code, or 99 after ``StopIteration``), ``message``, plus
        ``history``, ``eval_history``, ``last_fun``, ``n_fallback``, ``hess_inv`` (for
        methods with a preconditioner) and ``allvecs`` with ``return_all``.

    Example::

        import numpy as np
        from scipy.optimize import minimize, rosen, rosen_der
        import optimus

        res = minimize(rosen, np.zeros(5), jac=rosen_der, method=optimus.scipy_method,
                       bounds=[(-2, 2)] * 5, options={"maxiter": 200})
        assert res.success and res.fun < 1e-3
    """
    from optimus.solve import minimize

    unknown = sorted(set(options) - set(SUPPORTED_OPTIONS))
    if unknown:
        raise ValueError(
            f"unsupported option(s) {unknown} for optimus.scipy_method; supported options: "
            f"{', '.join(sorted(SUPPORTED_OPTIONS))}"
        )
    if constraints is not None and (
        (isinstance(constraints, dict) and constraints) or np.size(constraints) > 0
    ):
        raise ValueError(
            "optimus.scipy_method does not support constraints; only bounds are handled "
            "(by box normalisation). Use method='SLSQP' or 'trust-constr' for constraints."
        )
    for name, value in (("hess", hess), ("hessp", hessp)):
        if value is not None:
            warnings.warn(
                f"optimus.scipy_method does not use Hessian information ({name}).",
                RuntimeWarning,
                stacklevel=2,
            )
    if not isinstance(args, tuple):
        args = (args,)
    steps = _pick(options, "maxiter", "steps", 100)
    max_evals = _pick(options, "maxfun", "max_evals", None)
    gtol = options.get("gtol", options.get("tol", 1e-5))
    method = options.get("optimizer", "optimus")
    params = options.get("params")
    key = options.get("key")
    optimizer_options = options.get("optimizer_options")
    if optimizer_options is not None and not isinstance(optimizer_options, dict):
        raise TypeError("option 'optimizer_options' must be a dict, e.g. {'learning_rate': 0.1}")
    disp = bool(options.get("disp", False))
    allvecs = [] if options.get("return_all", False) else None

    x0 = np.atleast_1d(np.asarray(x0))
    if x0.dtype.kind in "iub":
        x0 = x0.astype(float)
    if x0.ndim != 1:
        raise ValueError(f"x0 must be 1-D, got shape {x0.shape}")
    if allvecs is not None:  # as scipy's BFGS: the starting point (clipped into the box,
        # as minimize does), then the best iterate after every iteration
        start = x0.astype(float)
        if bounds is not None:
            from optimus.solve import _parse_bounds

            box = _parse_bounds(bounds, jnp.zeros(x0.size))
            start = np.clip(start, np.asarray(box.lo), np.asarray(box.hi))
        allvecs.append(start)

    def f_args(x):
        return fun(x, *args)

    if isinstance(jac, str):
        raise ValueError(
            f"jac={jac!r}: optimus.scipy_method does not use finite differences. Pass a "
            "gradient (jac=callable or jac=True with fun returning (value, grad)), or write "
            "fun with jax.numpy and leave jac=None so that JAX differentiates it."
        )
    if callable(jac):

        def jac_args(x):
            return jac(x, *args)

        jac_arg: Any = jac_args
    elif jac is True:
        jac_arg = True
    elif jac is None or jac is False:
        if not _is_traceable(f_args, jnp.asarray(x0)):
            raise TypeError(
                "optimus.scipy_method needs gradients: pass jac=callable (or jac=True when "
                "fun returns (value, grad)), or write fun with jax.numpy so that JAX can "
                "differentiate it (fun could not be traced by JAX, or does not return a "
                "scalar). Finite differences are not supported."
            )
        jac_arg = None
    else:
        raise TypeError(f"jac must be a callable, True, or None; got {type(jac).__name__}")

    wrapped, flags = _callback_adapter(callback, allvecs)
    res = minimize(
        f_args,
        x0,
        method=method,
        steps=steps,
        max_evals=max_evals,
        bounds=bounds,
        key=key,
        params=params,
        jac=jac_arg,
        callback=wrapped,
        gtol=gtol,
        options=optimizer_options,
    )
    status: int = int(res.status)
    success = bool(res.success)
    message = str(res.message)
    if flags.get("stopped"):
        status, success = STOP_ITERATION_STATUS, False
        message = "`callback` raised `StopIteration`."
    out = ScipyOptimizeResult(
        x=np.asarray(res.x, dtype=np.float64).reshape(x0.shape),
        fun=float(res.fun),
        jac=np.asarray(res.jac, dtype=np.float64).reshape(x0.shape),
        nit=int(res.nit),
        nfev=int(res.nfev),
        njev=int(res.njev),
        success=success,
        status=status,
        message=message,
        history=np.asarray(res.history),
        eval_history=np.asarray(res.eval_history),
        last_fun=float(res.last_fun),
        n_fallback=int(res.n_fallback),
        method=res.method,
    )
    if "hess_inv" in res:  # an operator (compact form) stays one, as L-BFGS-B's does
        h = res.hess_inv
        out.hess_inv = h if hasattr(h, "matvec") else np.asarray(h, dtype=np.float64)
    if allvecs is not None:
        out.allvecs = allvecs
    if disp:
        print(message)
        print(f"         Current function value: {out.fun:.6g}")
        print(f"         Iterations: {out.nit}")
        print(f"         Function evaluations: {out.nfev}")
        print(f"         Status: {Status(status).name if status in set(Status) else status}")
    return out
