"""The public driver `optimus.minimize`: results, budgets, bad input, NaN handling, caching."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import optimus
from optimus.nets import NetConfig, build_net
from optimus.result import Status

NET = build_net(NetConfig(width=16, depth=1, num_heads=2), jax.random.key(0))
NET_NP = build_net(NetConfig(width=16, depth=1, num_heads=2, precondition=False), jax.random.key(0))
NET_MLP = build_net(NetConfig(kind="mlp", hidden=16), jax.random.key(0))
PARAMS = {"optimus": NET, "optimus-noprecond": NET_NP, "mlp": NET_MLP}
LR = {"sgd": 0.05, "sgdm": 0.01, "adam": 0.05}


def sphere(x):
    return jnp.sum((x - 1.0) ** 2)


def _kw(method):
    if method in PARAMS:
        return {"params": PARAMS[method]}
    if method in LR:
        return {"options": {"learning_rate": LR[method]}}
    return {}


def test_methods_listed():
    assert set(optimus.methods()) == {
        "optimus",
        "optimus-noprecond",
        "mlp",
        "bfgs",
        "lbfgs",
        "adam",
        "sgd",
        "sgdm",
    }


@pytest.mark.parametrize(
    "method", ["bfgs", "lbfgs", "adam", "sgd", "sgdm", "optimus", "optimus-noprecond", "mlp"]
)
def test_result_fields_and_descent(method):
    x0 = jnp.zeros(10)
    res = optimus.minimize(sphere, x0, method=method, steps=30, **_kw(method))
    for field in (
        "x",
        "fun",
        "jac",
        "nit",
        "nfev",
        "njev",
        "success",
        "status",
        "message",
        "history",
    ):
        assert field in res
    assert res.success
    assert res.fun < 0.5 * float(sphere(x0))
    assert res.fun == pytest.approx(float(sphere(res.x)), rel=1e-5)
    np.testing.assert_allclose(res.jac, jax.grad(sphere)(res.x), rtol=1e-4, atol=1e-6)
    assert len(res.history) == res.nit + 1
    assert res.history[0] == pytest.approx(float(sphere(x0)))
    assert np.all(np.diff(res.history) <= 0)  # best-so-far is monotone
    assert res.history[-1] == pytest.approx(res.fun)
    assert res.nfev == res.njev >= res.nit
    if method in ("bfgs", "optimus"):
        assert res.hess_inv.shape == (10, 10)


def test_bfgs_quickstart_converges():
    res = optimus.minimize(sphere, jnp.zeros(50), method="bfgs", steps=100)
    assert res.status == Status.CONVERGED and res.success
    np.testing.assert_allclose(res.x, 1.0, atol=1e-4)


def test_budgets_steps_and_max_evals():
    res = optimus.minimize(sphere, jnp.zeros(5), method="adam", steps=7, gtol=0.0)
    assert res.nit == 7 and res.nfev == 7 and res.status == Status.MAX_STEPS
    rosen = lambda x: jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)  # noqa: E731
    res = optimus.minimize(rosen, jnp.zeros(4), method="bfgs", steps=1000, max_evals=15)
    assert res.nfev == 15 and res.status == Status.MAX_EVALS and res.nit < 15


def test_numpy_objective_with_jac_matches_jax_path():
    def f_np(x):
        return float(np.sum((x - 1.0) ** 2))

    def g_np(x):
        return 2 * (x - 1.0)

    r1 = optimus.minimize(f_np, np.zeros(6, np.float32), jac=g_np, method="lbfgs", steps=20)
    r2 = optimus.minimize(
        lambda x: (f_np(x), g_np(x)), np.zeros(6, np.float32), jac=True, method="lbfgs", steps=20
    )
    r3 = optimus.minimize(sphere, jnp.zeros(6), method="lbfgs", steps=20)
    for r in (r1, r2):
        assert r.success and r.nit == r3.nit
        np.testing.assert_allclose(r.x, r3.x, atol=1e-5)


def test_pytree_x0():
    def f(p):
        return jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum((p["b"] + 1.0) ** 2)

    x0 = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}
    res = optimus.minimize(f, x0, method="bfgs", steps=50)
    assert res.x["a"].shape == (2, 3) and res.x["b"].shape == (4,)
    np.testing.assert_allclose(res.x["a"], 2.0, atol=1e-4)
    np.testing.assert_allclose(res.x["b"], -1.0, atol=1e-4)


def test_bounds_keep_evaluations_inside_and_find_boundary_minimum():
    seen = []

    def f(x):
        seen.append(np.asarray(x).copy())
        return float(np.sum((x - 3.0) ** 2))

    res = optimus.minimize(
        f,
        np.zeros(3, np.float32),
        jac=lambda x: 2 * (x - 3.0),
        bounds=(-1.0, 2.0),
        method="adam",
        steps=200,
        options={"learning_rate": 0.05},
    )
    assert np.all(np.stack(seen) >= -1.0 - 1e-6) and np.all(np.stack(seen) <= 2.0 + 1e-6)
    np.testing.assert_allclose(res.x, 2.0, atol=1e-3)
    res = optimus.minimize(sphere, jnp.zeros(2), bounds=[(-5, 5), (-5, 0.5)], method="lbfgs")
    np.testing.assert_allclose(res.x, [1.0, 0.5], atol=1e-4)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_line_search_bounds_release_a_coordinate_at_a_bound(method):
    # an interior minimum from starts on, beyond, and near a bound, on the jitted and the
    # host (jac=) path: the clip's derivative must not freeze the coordinate at the bound
    # and report a zero gradient there as convergence (the plain clip did both)
    c = np.array([0.5, -0.5, 0.25], np.float32)

    def f(x):
        return jnp.sum((x - c) ** 2)

    for x0 in ([1.0, 0.0, 0.0], [5.0, 0.0, 0.0], [-1.0, 1.0, 0.99]):
        x0 = np.asarray(x0, np.float32)
        for kw in ({}, {"jac": lambda x: 2 * (x - c)}):
            fun = (lambda x: float(np.sum((x - c) ** 2))) if kw else f
            res = optimus.minimize(fun, x0, method=method, bounds=(-1.0, 1.0), steps=50, **kw)
            assert res.status == Status.CONVERGED
            np.testing.assert_allclose(res.x, c, atol=1e-4)
    # random convex quadratics whose line-search steps overshoot onto a bound
    key = jax.random.key(3)
    for i in range(6):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        m = jax.random.normal(k1, (4, 4))
        a = m @ m.T + 0.1 * jnp.eye(4)
        xs = jax.random.uniform(k2, (4,), minval=-0.5, maxval=0.5)
        res = optimus.minimize(
            lambda x, a=a, xs=xs: (x - xs) @ a @ (x - xs),
            jnp.full(4, 0.9),
            method=method,
            bounds=(-1.0, 1.0),
            steps=100,
        )
        assert res.fun < 1e-6, (i, res.x, xs)
    # a minimum on the bound is a KKT point: CONVERGED there
    res = optimus.minimize(
        lambda x: jnp.sum((x - jnp.array([2.0, 0.3, -3.0])) ** 2),
        jnp.zeros(3),
        method=method,
        bounds=(-1.0, 1.0),
    )
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(res.x, [1.0, 0.3, -1.0], atol=1e-4)


class _BoxedQuadratic(eqx.Module):
    h: jax.Array
    t: jax.Array

    def __call__(self, x):
        return 0.5 * (x - self.t) @ self.h @ (x - self.t)


@pytest.mark.parametrize("method", ["bfgs", "lbfgs"])
def test_line_search_bounds_match_scipy_lbfgsb_on_boxed_quadratics(method):
    # convex quadratics whose unconstrained minimum lies partly outside the box: the box
    # minimum is a KKT point on its faces, which scipy's L-BFGS-B finds; a line search that
    # pushes a coordinate past a bound must continue from the projection (unit_box)
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = rng.normal(size=(6, 6))
        h = (a @ a.T + 0.1 * np.eye(6)) * 10 ** rng.uniform(-1, 2)
        t = rng.uniform(-1.5, 1.5, 6)
        x0 = rng.uniform(-1, 1, 6).astype(np.float32)
        ref = scipy.optimize.minimize(
            lambda x, h=h, t=t: 0.5 * (x - t) @ h @ (x - t),
            x0.astype(float),
            jac=lambda x, h=h, t=t: h @ (x - t),
            bounds=[(-1, 1)] * 6,
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        obj = _BoxedQuadratic(jnp.asarray(h, jnp.float32), jnp.asarray(t, jnp.float32))
        res = optimus.minimize(obj, x0, method=method, bounds=(-1.0, 1.0), steps=200)
        assert (res.fun - ref.fun) / max(1.0, abs(ref.fun)) <= 1e-4, (res.status, res.x, ref.x)


def test_a_changed_unhashable_objective_is_solved_anew():
    @dataclasses.dataclass
    class Fit:  # unhashable: compiled for each call, so a changed field is seen
        target: jax.Array

        def __call__(self, x, *args):
            return jnp.sum((x - self.target) ** 2)

    obj = Fit(jnp.array([1.0, 2.0, 3.0]))
    optimus.minimize(obj, np.zeros(3, np.float32), method="bfgs")
    obj.target = jnp.array([-5.0, 0.0, 5.0])
    res = optimus.minimize(obj, np.zeros(3, np.float32), method="bfgs")
    np.testing.assert_allclose(res.x, [-5.0, 0.0, 5.0], atol=1e-4)
    batch = optimus.minimize_batch(obj, np.zeros((2, 3), np.float32), method="bfgs")
    np.testing.assert_allclose(batch.x, [[-5.0, 0.0, 5.0]] * 2, atol=1e-4)


@pytest.mark.parametrize(
    "method, option",
    [("bfgs", {"c1": 1e-3}), ("lbfgs", {"c2": 0.5}), ("bfgs", {"init_step": 0.5})],
)
def test_line_search_float_options(method, option):
    # float options of the first-order methods are traced; those of the line-search methods
    # are checked in Python when the method is built, so they stay static
    res = optimus.minimize(sphere, jnp.zeros(3), method=method, options=option)
    assert res.success and res.fun < 1e-8
    host = optimus.minimize(sphere, jnp.zeros(3), method=method, options=option, callback=id)
    assert host.success and host.fun < 1e-8


def test_size_one_output_and_unhashable_objective():
    res = optimus.minimize(lambda x: jnp.sum((x - 1.0) ** 2, keepdims=True), jnp.zeros(3))
    assert res.success and res.fun < 1e-6

    @dataclasses.dataclass
    class Quadratic:  # a plain dataclass: __hash__ is None
        c: float

        def __call__(self, x):
            return jnp.sum((x - self.c) ** 2)

    for c in (0.3, 0.9):  # compared by identity: no stale compiled loop
        res = optimus.minimize(Quadratic(c), jnp.zeros(3), method="bfgs")
        np.testing.assert_allclose(res.x, c, atol=1e-5)


def test_gtol_accepts_numpy_scalars():
    res = optimus.minimize(sphere, jnp.zeros(3), method="bfgs", gtol=np.float32(1e-3))
    assert res.status == Status.CONVERGED
    with pytest.raises(ValueError, match="gtol"):
        optimus.minimize(sphere, jnp.zeros(3), method="bfgs", gtol=True)


@pytest.mark.parametrize("stop", [True, np.bool_(True), jnp.asarray(True)])
def test_callback_stops_on_any_boolean_true(stop):
    res = optimus.minimize(
        sphere, jnp.zeros(3), method="adam", callback=lambda r: stop if r.nit >= 3 else False
    )
    assert res.status == Status.CALLBACK_STOP and res.nit == 3


def test_float64_preserved():
    with jax.enable_x64(True):
        res = optimus.minimize(sphere, jnp.zeros(3, jnp.float64), method="bfgs")
        assert res.x.dtype == jnp.float64
        np.testing.assert_allclose(res.x, 1.0, atol=1e-8)


def test_second_call_does_not_retrace():
    calls = []

    def f(x):
        calls.append(1)  # runs only while tracing
        return jnp.sum(x**2)

    optimus.minimize(f, jnp.ones(4), method="adam", steps=5)
    n = len(calls)
    optimus.minimize(f, 2 * jnp.ones(4), method="adam", steps=5)
    assert len(calls) == n


@pytest.mark.parametrize("method", ["adam", "optimus"])
def test_nan_mid_run_is_rejected_and_retried_shorter(method):
    def f(x):  # finite near the start, NaN once x[0] passes 0.5
        return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum((x - 1.0) ** 2))

    res = optimus.minimize(f, jnp.zeros(3), method=method, steps=200, **_kw(method))
    assert res.n_rejected > 0  # trial points past the wall were retried half-way back
    assert res.success or res.status == Status.NONFINITE
    assert np.all(np.isfinite(res.x)) and float(res.x[0]) <= 0.5
    assert np.isfinite(res.fun) and res.fun == pytest.approx(float(f(res.x)))
    assert res.fun < float(f(jnp.zeros(3)))


@pytest.mark.parametrize("method", ["adam", "optimus"])
def test_nan_everywhere_but_the_start_stops_cleanly(method):
    def f(x):  # finite only at x0 = 0: every retry, however short, is NaN
        return jnp.where(jnp.any(x != 0), jnp.nan, jnp.sum((x - 1.0) ** 2))

    res = optimus.minimize(f, jnp.zeros(3), method=method, steps=200, **_kw(method))
    assert not res.success and res.status == Status.NONFINITE
    assert "NaN" in res.message
    np.testing.assert_array_equal(res.x, jnp.zeros(3))
    assert res.fun == 3.0 and res.n_rejected == 30 and res.nfev == 32


def test_line_search_backs_off_from_nonfinite_region():
    def f(x):  # +inf for x > 1.5: BFGS's first trial steps overshoot into it
        return jnp.where(x[0] > 1.5, jnp.inf, (x[0] - 1.4) ** 2 * 100)

    res = optimus.minimize(f, jnp.zeros(1), method="bfgs", steps=50)
    assert np.isfinite(res.fun) and float(res.x[0]) <= 1.5
    assert res.fun < 1e-6


def test_nonfinite_at_start():
    res = optimus.minimize(lambda x: jnp.sum(jnp.log(x)), -jnp.ones(2), method="adam")
    assert not res.success and res.status == Status.NO_FINITE_POINT
    np.testing.assert_array_equal(res.x, -jnp.ones(2))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(x0=jnp.array([0.0, jnp.nan])), ValueError, "NaN or inf"),
        (dict(x0=jnp.array([1, 2])), TypeError, "floating-point"),
        (dict(x0=jnp.zeros(0)), ValueError, "no elements"),
        (dict(method="newton"), ValueError, "unknown method"),
        (dict(steps=0), ValueError, "steps"),
        (dict(max_evals=-1), ValueError, "max_evals"),
        (dict(fun=lambda x: x**2), ValueError, "scalar"),
        (dict(fun=lambda x: np.sum(np.asarray(x) ** 2)), TypeError, "jac="),
        (dict(fun=3.0), TypeError, "callable"),
        (dict(bounds=(1.0, 0.0)), ValueError, "lower bound"),
        (dict(bounds=[(0, 1)] * 3), ValueError, "bounds"),
        (dict(method="adam", options={"learning_rat": 0.1}), ValueError, "invalid options"),
        (dict(method="optimus", params=NET_MLP), ValueError, "needs a 'optimus' network"),
        (dict(method="optimus", params={"w": 1}), TypeError, "params"),
        (dict(method="bfgs", params=NET), ValueError, "only used by learned"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(fun=sphere, x0=jnp.zeros(2), method="bfgs")
    args.update(kwargs)
    fun, x0 = args.pop("fun"), args.pop("x0")
    with pytest.raises(exc, match=match):
        optimus.minimize(fun, x0, **args)


def test_numpy_objective_bad_gradient_shape():
    with pytest.raises(ValueError, match="gradient has shape"):
        optimus.minimize(
            lambda x: float(x @ x), np.ones(3, np.float32), jac=lambda x: x[:2], method="adam"
        )


def test_callback_stops_and_sees_progress():
    seen = []

    def cb(r):
        seen.append(r.fun)
        return r.nit >= 4

    res = optimus.minimize(sphere, jnp.zeros(3), method="adam", steps=50, callback=cb)
    assert res.status == Status.CALLBACK_STOP and res.nit == 4 and len(seen) == 4
    assert seen == sorted(seen, reverse=True)


def test_matches_scipy_bfgs_on_rosenbrock():
    with jax.enable_x64(True):
        x0 = np.array([-1.2, 1.0, -1.2, 1.0])
        rosen = lambda x: jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)  # noqa: E731
        ours = optimus.minimize(rosen, jnp.asarray(x0), method="bfgs", steps=500)
        ref = scipy.optimize.minimize(
            scipy.optimize.rosen, x0, jac=scipy.optimize.rosen_der, method="BFGS"
        )
        np.testing.assert_allclose(ours.x, ref.x, atol=1e-4)
        assert ours.success and ours.nit <= 2 * ref.nit + 5


def test_module_objectives_and_learning_rates_share_one_compilation():

    traces = []

    class Shifted(eqx.Module):
        c: jax.Array

        def __call__(self, x):
            traces.append(1)
            return jnp.sum((x - self.c) ** 2)

    for i, lr in enumerate([0.1, 0.03, 0.3]):
        res = optimus.minimize(
            Shifted(jnp.full(3, float(i))),
            jnp.zeros(3),
            method="adam",
            steps=200,
            options={"learning_rate": lr},
        )
        np.testing.assert_allclose(res.x, float(i), atol=0.05)
    # one cheap eval_shape check per call + a single trace of the jitted solve for all three
    assert len(traces) == 3 + 1


def test_last_fun_is_the_last_evaluation():
    res = optimus.minimize(
        sphere, jnp.zeros(4), method="sgd", steps=5, gtol=0.0, options={"learning_rate": 0.1}
    )
    assert res.last_fun == pytest.approx(res.fun)  # monotone on a sphere with a small step


def test_eval_history_counts_every_evaluation():
    rosen = lambda x: jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)  # noqa: E731
    res = optimus.minimize(rosen, jnp.zeros(3), method="bfgs", steps=10)
    assert len(res.eval_history) == res.nfev > res.nit
    assert res.eval_history[-1] == pytest.approx(res.fun)
    assert np.all(np.diff(res.eval_history) <= 0)


def test_learned_methods_take_update_rule_options():
    """``options`` of a learned method set fields of its update rule: ``restart=0`` is the
    shipped weights run without restarts, bit for bit, and everything else is refused."""
    import dataclasses

    from optimus import functions as fn
    from optimus.nets import with_config

    problem = fn.make_problem("rastrigin", 6, variant="transformed", key=jax.random.key(4))
    x0 = problem.sample_x0(jax.random.key(5))
    kw = dict(bounds=(problem.lo, problem.hi), gtol=0.0, steps=40)
    shipped = optimus.load_pretrained("optimus")
    assert shipped.config.restart > 0
    local = with_config(shipped, dataclasses.replace(shipped.config, restart=0.0))
    a = optimus.minimize(problem, x0, options={"restart": 0.0}, **kw)
    b = optimus.minimize(problem, x0, params=local, **kw)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    assert a.fun == b.fun and a.nfev == b.nfev
    for method, bad, match in [
        ("optimus", {"learning_rate": 0.1}, "only update-rule options"),
        ("optimus", {"restart": -1.0}, "restart"),
        ("mlp", {"sr1": True}, "needs secant"),
    ]:
        with pytest.raises(ValueError, match=match):
            optimus.minimize(problem, x0, method=method, options=bad, **kw)
