"""`OptimizeResult` with scipy's field names, and readable status codes.

``success`` means "terminated normally with a finite best iterate": the gradient tolerance
was met, or the iteration / evaluation budget the caller asked for was used up. This differs
from scipy, where running out of iterations counts as a failure: optimus is built for
fixed-budget use (``steps=100``), where exhausting the budget is the expected outcome. The
``status`` code always says which of the cases happened.
"""

from __future__ import annotations

import enum

import numpy as np
from scipy.optimize import OptimizeResult as _ScipyResult


class Status(enum.IntEnum):
    """Termination codes of :func:`optimus.minimize`."""

    CONVERGED = 0
    MAX_STEPS = 1
    MAX_EVALS = 2
    NONFINITE = 3
    LINESEARCH_FAILED = 4
    CALLBACK_STOP = 5
    NO_FINITE_POINT = 6
    OBJECTIVE_ERROR = 7

    @property
    def success(self) -> bool:
        return self in (Status.CONVERGED, Status.MAX_STEPS, Status.MAX_EVALS, Status.CALLBACK_STOP)

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "Optimization terminated successfully: gradient norm below gtol.",
    Status.MAX_STEPS: "Iteration budget (steps) reached.",
    Status.MAX_EVALS: "Function evaluation budget (max_evals) reached.",
    Status.NONFINITE: (
        "The objective or its gradient became NaN or inf; returning the best finite iterate seen."
    ),
    Status.LINESEARCH_FAILED: (
        "Line search could not find a point satisfying the Wolfe conditions "
        "(often precision loss near a minimum); returning the best iterate seen."
    ),
    Status.CALLBACK_STOP: "Stopped by the callback.",
    Status.NO_FINITE_POINT: "The objective is not finite at the starting point.",
    Status.OBJECTIVE_ERROR: (
        "The objective raised an exception; returning the best iterate seen "
        "(the exception is in result.exception)."
    ),
}


class OptimizeResult(_ScipyResult):
    """Result of :func:`optimus.minimize`: a :class:`scipy.optimize.OptimizeResult`.

    Fields: ``x`` (best iterate seen), ``fun`` (objective at ``x``), ``jac`` (gradient at
    ``x``), ``nit`` (completed iterations), ``nfev``/``njev`` (objective / gradient
    evaluations; equal, as value and gradient are computed together), ``success``, ``status``
    (a :class:`Status` value), ``message``, ``history`` (best objective after each iteration,
    ``history[0] = f(x0)``, length ``nit + 1``), ``eval_history`` (best objective after each
    evaluation, length ``nfev``: the axis for comparisons at equal evaluations), ``last_fun``
    (objective at the last evaluated point), ``n_fallback`` (learned methods: network steps
    replaced by the safeguard's safe gradient step), ``n_rejected`` (trial points rejected
    because the objective or gradient was non-finite, or, for learned methods, worse after a
    safeguard step or, for learned models with step acceptance (``NetConfig.monotone``, all
    shipped ones), worse than the best accepted point; first-order and learned methods retry
    them with a halved step, line searches shrink theirs), ``method``, for preconditioned
    methods ``hess_inv`` (the inverse-Hessian estimate or learned preconditioner ``B``; a
    :class:`scipy.sparse.linalg.LinearOperator`, as scipy's L-BFGS-B returns, when ``B`` was
    held in compact form, :data:`optimus.solve.COMPACT_MIN_RATIO`), and
    after ``status == OBJECTIVE_ERROR`` the exception the objective raised in ``exception``.
    """


def make_result(
    *,
    x,
    fun,
    jac,
    nit: int,
    nfev: int,
    status: Status,
    history,
    method: str,
    hess_inv=None,
    **extra,
) -> OptimizeResult:
    status = Status(int(status))
    fields = dict(
        x=x,
        fun=fun,
        jac=jac,
        nit=int(nit),
        nfev=int(nfev),
        njev=int(nfev),
        success=bool(status.success and np.all(np.isfinite(np.asarray(fun)))),
        status=status,
        message=status.message,
        history=np.asarray(history),
        method=method,
    )
    if hess_inv is not None:
        fields["hess_inv"] = hess_inv
    fields.update(extra)
    return OptimizeResult(fields)
