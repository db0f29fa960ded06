"""Tests for BFGS / L-BFGS (optimus.optimizers.quasi_newton) against scipy and the theory."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

from optimus.optimizers.base import Optimizer
from optimus.optimizers.quasi_newton import (
    QuasiNewtonState,
    bfgs,
    lbfgs,
    lbfgs_inverse_hessian,
)

# ----------------------------------------------------------------------------- problems


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def beale(x):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def quad_data(n: int, cond: float, seed: int):
    """A = Q diag(logspace(0, log10 cond)) Q^T, b random; returns numpy (A, b, A^-1 b)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = q @ np.diag(np.logspace(0.0, np.log10(cond), n)) @ q.T
    A = 0.5 * (A + A.T)
    b = rng.standard_normal(n)
    return A, b, np.linalg.solve(A, b)


def make_quad(A, b):
    # constants take x's dtype when traced (so they are float64 under enable_x64)
    return lambda x: 0.5 * x @ jnp.asarray(A, x.dtype) @ x - jnp.asarray(b, x.dtype) @ x


def rosen_start(n: int) -> np.ndarray:
    return np.array([-1.2 if i % 2 == 0 else 1.0 for i in range(n)])


# ----------------------------------------------------------------------------- drivers


def gnorm_inf(state) -> float:
    return float(jnp.max(jnp.abs(state.g_k)))


@functools.cache
def jitted(fn):
    """One jax.jit wrapper per function, so tests that share an optimizer share compilations."""
    return jax.jit(fn)


def solve(opt: Optimizer, fun, x0, *, gtol=0.0, max_nfev=1000, max_nit=None, grad_fun=None):
    """The reference Python driver: one value_and_grad per update call."""
    vg = jitted(grad_fun or jax.value_and_grad(fun))
    update = jitted(opt.update)
    state = opt.init(jnp.asarray(x0))
    while not bool(state.failed) and int(state.nfev) < max_nfev:
        value, grad = vg(state.x)
        state = update(state, value, grad)
        if max_nit is not None and int(state.nit) >= max_nit:
            break
        if int(state.nfev) > 0 and gnorm_inf(state) < gtol:
            break
    return state


def solve_while(opt: Optimizer, fun, x0, *, gtol=0.0, max_nfev=1000, grad_fun=None):
    """The same driver as one jitted jax.lax.while_loop (requires fixed state types)."""
    vg = grad_fun or jax.value_and_grad(fun)

    def cond(state):
        running = (state.nfev == 0) | (jnp.max(jnp.abs(state.g_k)) >= gtol)
        return ~state.failed & (state.nfev < max_nfev) & running

    def body(state):
        value, grad = vg(state.x)
        return opt.update(state, value, grad)

    return jax.jit(lambda x: jax.lax.while_loop(cond, body, opt.init(x)))(jnp.asarray(x0))


def scipy_solve(method: str, fun, x0, gtol):
    vg = jax.jit(jax.value_and_grad(fun))

    def fg(x):
        value, grad = vg(jnp.asarray(x))
        return float(value), np.asarray(grad, dtype=np.float64)

    if method == "bfgs":
        options = {"gtol": gtol}
        name = "BFGS"
    else:
        options = {"gtol": gtol, "ftol": 1e-15, "maxcor": 10}
        name = "L-BFGS-B"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return so.minimize(fg, np.asarray(x0, np.float64), jac=True, method=name, options=options)


def avals(tree):
    return [
        (leaf.shape, leaf.dtype, leaf.weak_type) for leaf in map(jax.typeof, jax.tree.leaves(tree))
    ]


def all_finite(state) -> bool:
    """Every float leaf finite, except f_hi (a rejected non-finite trial is stored as +inf)."""
    assert bool(state.f_hi < jnp.inf) or bool(state.f_hi == jnp.inf)  # never NaN
    leaves = jax.tree.leaves(state._replace(f_hi=state.f_lo))
    return all(
        bool(jnp.all(jnp.isfinite(leaf)))
        for leaf in leaves
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )


OPTS = {"bfgs": bfgs, "lbfgs": lbfgs}
DEFAULT = {"bfgs": bfgs(), "lbfgs": lbfgs()}  # shared instances: compiled once per shape

# ----------------------------------------------------------------------------- vs scipy

_QA, _QB, _QX = quad_data(10, 100.0, seed=0)
PROBLEMS = {
    "rosen2": (rosen, rosen_start(2), None),
    "rosen5": (rosen, rosen_start(5), None),
    "rosen10": (rosen, rosen_start(10), None),
    "quad10_cond100": (make_quad(_QA, _QB), np.zeros(10), _QX),
    "beale": (beale, np.array([1.0, 1.0]), np.array([3.0, 0.5])),
}
GTOL = 1e-7


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_matches_scipy(method, problem):
    fun, x0, x_exact = PROBLEMS[problem]
    with jax.enable_x64(True):
        ref = scipy_solve(method, fun, x0, GTOL)
        state = solve(DEFAULT[method], fun, x0, gtol=GTOL, max_nfev=1000)
        x = np.asarray(state.x_k)
        assert state.x_k.dtype == jnp.float64
        assert not bool(state.failed)
        assert gnorm_inf(state) < GTOL
        np.testing.assert_allclose(x, ref.x, rtol=0, atol=1e-5)
        assert abs(float(state.f_k) - ref.fun) < 1e-9
        np.testing.assert_allclose(fun(jnp.asarray(x)), state.f_k, rtol=1e-6, atol=1e-20)
        if x_exact is not None:
            np.testing.assert_allclose(x, x_exact, rtol=0, atol=1e-7)
        nit, nfev = int(state.nit), int(state.nfev)
        assert (ref.nit - 5) / 2 <= nit <= 2 * ref.nit + 5, (nit, ref.nit)
        assert nfev <= 2 * ref.nfev + 10, (nfev, ref.nfev)
        assert nfev >= nit + 1  # one evaluation for x0, at least one per iteration


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_while_loop_driver_matches_python_driver(method):
    with jax.enable_x64(True):
        x0 = rosen_start(5)
        a = solve(DEFAULT[method], rosen, x0, gtol=1e-6)
        b = solve_while(DEFAULT[method], rosen, x0, gtol=1e-6)
        assert int(a.nit) == int(b.nit) and int(a.nfev) == int(b.nfev)
        assert int(b.nit) > 10 and not bool(b.failed)
        np.testing.assert_allclose(np.asarray(b.x_k), np.ones(5), atol=1e-5)
        np.testing.assert_allclose(np.asarray(b.x_k), np.asarray(a.x_k), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- BFGS theory


def _bfgs_trace(opt, fun, n, max_nit):
    """Run until nit == max_nit; return the list of H after each accepted step."""
    vg = jax.jit(jax.value_and_grad(fun))
    update = jitted(opt.update)
    state = opt.init(jnp.zeros(n))
    hs = [np.asarray(opt.hess_inv(state))]
    while int(state.nit) < max_nit and not bool(state.failed) and int(state.nfev) < 500:
        nit = int(state.nit)
        value, grad = vg(state.x)
        state = update(state, value, grad)
        if int(state.nit) > nit:
            hs.append(np.asarray(opt.hess_inv(state)))
    return state, hs


def test_bfgs_inverse_hessian_exact_line_search_quadratic():
    # c2 = 0.1: on a quadratic the cubic zoom step is the exact minimiser along p, so BFGS
    # is the conjugate-direction method and H_n = A^{-1} (finite termination).
    n = 6
    A, b, xs = quad_data(n, 10.0, seed=6)
    with jax.enable_x64(True):
        state, hs = _bfgs_trace(bfgs(c2=0.1), make_quad(A, b), n, max_nit=n)
        assert int(state.nit) == n
        np.testing.assert_allclose(hs[0], np.eye(n))
        Ainv = np.linalg.inv(A)
        err = np.linalg.norm(hs[-1] - Ainv) / np.linalg.norm(Ainv)
        assert err < 1e-8, err
        assert np.linalg.norm(hs[n // 2] - Ainv) / np.linalg.norm(Ainv) > 0.1  # not trivially
        np.testing.assert_allclose(np.asarray(state.x_k), xs, atol=1e-9)


def test_bfgs_inverse_hessian_default_wolfe_quadratic_spd():
    n = 10
    A, b, _ = quad_data(n, 10.0, seed=10)
    with jax.enable_x64(True):
        state, hs = _bfgs_trace(bfgs(), make_quad(A, b), n, max_nit=2 * n)
        assert int(state.nit) == 2 * n
        Ainv = np.linalg.inv(A)
        err = np.linalg.norm(hs[-1] - Ainv) / np.linalg.norm(Ainv)
        assert err < 0.1, err
        for h in hs:
            np.testing.assert_array_equal(h, h.T)
            assert np.linalg.eigvalsh(h).min() > 0


def test_bfgs_hessian_spd_on_rosenbrock():
    with jax.enable_x64(True):
        opt = DEFAULT["bfgs"]
        vg = jitted(jax.value_and_grad(rosen))
        update = jitted(opt.update)
        state = opt.init(jnp.asarray(rosen_start(5)))
        for _ in range(60):
            value, grad = vg(state.x)
            state = update(state, value, grad)
            h = np.asarray(opt.hess_inv(state))
            np.testing.assert_array_equal(h, h.T)
            assert np.linalg.eigvalsh(h).min() > 0
        assert int(state.nit) > 20


def test_lbfgs_two_loop_matches_explicit_recursion():
    m, n = 3, 5
    with jax.enable_x64(True):
        opt = lbfgs(memory=m)
        state = solve(opt, rosen, rosen_start(n), max_nit=10)
        mem = state.mem
        assert int(mem.count) == m and int(state.nit) == 10 and int(mem.head) != 0
        # rebuild H from gamma I by the explicit BFGS formula, oldest pair first
        order = [(int(mem.head) + i) % m for i in range(m)]
        S = np.asarray(mem.S)[order]
        Y = np.asarray(mem.Y)[order]
        H = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) * np.eye(n)
        for s, y in zip(S, Y, strict=True):
            rho = 1.0 / (y @ s)
            V = np.eye(n) - rho * np.outer(y, s)
            H = V.T @ H @ V + rho * np.outer(s, s)
        dense = np.asarray(lbfgs_inverse_hessian(state))
        np.testing.assert_allclose(dense, H, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(state.p), -H @ np.asarray(state.g_k), rtol=1e-10, atol=1e-14
        )


# ----------------------------------------------------------------------------- float32, pytrees


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_float32_rosenbrock_fixed_types_single_trace(method):
    opt = DEFAULT[method]
    traces = []

    def step(state, value, grad):
        traces.append(1)
        return opt.update(state, value, grad)

    step = jax.jit(step)
    vg = jitted(jax.value_and_grad(rosen))
    state0 = opt.init(jnp.asarray([-1.2, 1.0], jnp.float32))
    assert isinstance(state0, QuasiNewtonState)
    assert state0.nit.dtype == jnp.int32 and state0.nit.shape == ()
    assert state0.failed.dtype == jnp.bool_ and state0.failed.shape == ()
    types0 = avals(state0)
    state = state0
    for i in range(300):
        value, grad = vg(state.x)
        if i < 3:  # the un-jitted update has the same output types (no compilation needed)
            assert avals(jax.eval_shape(opt.update, state, value, grad)) == types0
        state = step(state, value, grad)
        assert jax.tree.structure(state) == jax.tree.structure(state0)
        assert avals(state) == types0
        assert all_finite(state)
        if bool(state.failed) or gnorm_inf(state) < 1e-4:
            break
    assert len(traces) == 1
    assert int(state.nit) > 10
    assert state.x.dtype == jnp.float32 and state.f_k.dtype == jnp.float32
    assert float(state.f_k) < 1e-6
    np.testing.assert_allclose(rosen(state.x_k), state.f_k, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.x_k), [1.0, 1.0], atol=2e-3)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_keeps_float64_dtype(method):
    with jax.enable_x64(True):
        opt = DEFAULT[method]
        state = solve(opt, rosen, rosen_start(5), max_nfev=5)
        assert int(state.nfev) == 5
        floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float64 for x in floats)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_matrix_shaped_x0(method):
    # x may have any shape; H lives in the flattened coordinates.
    w = np.arange(1.0, 7.0).reshape(2, 3)
    c = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])

    def fun(x):
        d = x - jnp.asarray(c, x.dtype)
        return jnp.sum(jnp.asarray(w, x.dtype) * d**2) + 0.1 * jnp.sum(d**4)

    with jax.enable_x64(True):
        opt = DEFAULT[method]
        state = solve(opt, fun, np.full((2, 3), 0.3), gtol=1e-9, max_nfev=300)
        assert state.x.shape == (2, 3) and state.p.shape == (2, 3)
        assert not bool(state.failed) and gnorm_inf(state) < 1e-9
        np.testing.assert_allclose(np.asarray(state.x_k), c, atol=1e-9)
        if method == "bfgs":
            H = np.asarray(opt.hess_inv(state))
            np.testing.assert_allclose(np.diag(H), 1.0 / (2.0 * w.ravel()), rtol=0.3)
        else:
            assert lbfgs_inverse_hessian(state).shape == (6, 6)


def test_optimizer_metadata():
    b, lb = bfgs(), lbfgs()
    assert (b.name, b.uses_line_search) == ("bfgs", True)
    assert (lb.name, lb.uses_line_search, lb.hess_inv) == ("lbfgs", True, None)
    state = b.init(jnp.zeros(4))
    np.testing.assert_array_equal(np.asarray(b.hess_inv(state)), np.eye(4))
    assert int(state.nit) == 0 and not bool(state.failed)
    np.testing.assert_array_equal(np.asarray(state.x), np.zeros(4))
    with pytest.raises(ValueError):
        bfgs(c1=0.5, c2=0.1)
    with pytest.raises(ValueError):
        lbfgs(memory=0)


# ----------------------------------------------------------------------------- failure paths


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_lying_gradient_fails_cleanly(method):
    A, b, _ = quad_data(4, 10.0, seed=1)
    fun = make_quad(A, b)

    def lying(x):
        value, grad = jax.value_and_grad(fun)(x)
        return value, -grad

    max_ls = 7
    x0 = np.ones(4)
    with jax.enable_x64(True):
        opt = OPTS[method](max_linesearch=max_ls)

        def body(i, state):
            return opt.update(state, *lying(state.x))

        # 40 update calls in one jitted fori_loop: the method must fail within its budget and
        # then stay frozen (nfev stops counting, x stays at the last accepted iterate).
        run = jax.jit(lambda x: jax.lax.fori_loop(0, 40, body, opt.init(x)))
        state = run(jnp.asarray(x0))
        assert bool(state.failed)
        assert int(state.nit) == 0
        assert 1 + max_ls <= int(state.nfev) <= 1 + 2 * max_ls
        assert all_finite(state)
        np.testing.assert_array_equal(np.asarray(state.x), x0)  # back at the last iterate
        np.testing.assert_array_equal(np.asarray(state.x_k), x0)
        np.testing.assert_array_equal(np.asarray(state.best_x), x0)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_zero_gradient_no_nan(method):
    with jax.enable_x64(True):
        opt = DEFAULT[method]
        fun = lambda x: 0.5 * jnp.sum(x**2)  # noqa: E731
        state = solve(opt, fun, np.zeros(5), max_nfev=60)
        assert all_finite(state)
        assert int(state.nfev) > 1
        np.testing.assert_array_equal(np.asarray(state.x_k), np.zeros(5))
        assert float(state.f_k) == 0.0


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_nonfinite_trials_are_rejected(method):
    # pseudo-Huber, minimiser 0 (f = 2), but f and its gradient are NaN for x_i < -3. Far from
    # the minimiser f is nearly linear, so the extrapolation of the line search overshoots into
    # the NaN region; those trials must count as "too long" and never be accepted.
    def fun(x):
        return jnp.sum(jnp.sqrt(1.0 + x**2) + 0.0 * jnp.log(x + 3.0))

    with jax.enable_x64(True):
        opt = DEFAULT[method]
        vg = jax.jit(jax.value_and_grad(fun))
        update = jitted(opt.update)
        state = opt.init(jnp.asarray([10.0, 30.0]))
        nan_trials = 0
        fs = []
        for _ in range(150):
            value, grad = vg(state.x)
            nan_trials += int(not np.isfinite(float(value)))
            nit = int(state.nit)
            state = update(state, value, grad)
            if int(state.nit) > nit:
                fs.append(float(state.f_k))
            assert all_finite(state)
            if bool(state.failed) or gnorm_inf(state) < 1e-8:
                break
        assert nan_trials > 0
        assert not bool(state.failed)
        assert len(fs) >= 5 and all(np.diff(fs) <= 1e-15)  # monotone up to rounding
        assert float(state.f_k) - 2.0 < 1e-14
        np.testing.assert_allclose(np.asarray(state.x_k), 0.0, atol=1e-7)


def test_nonfinite_start_fails():
    opt = bfgs()
    state = opt.init(jnp.ones(2))
    state = opt.update(state, jnp.nan, jnp.ones(2))
    assert bool(state.failed) and int(state.nit) == 0
    np.testing.assert_array_equal(np.asarray(state.x), np.ones(2))
