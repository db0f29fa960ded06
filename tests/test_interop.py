"""optax, scipy and optimistix adapters; pytrees; clear errors on misuse."""

import functools
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest
import scipy.optimize
from scipy.optimize import rosen, rosen_der

import optimus
from optimus.interop.optax import OptimusState


def quad(p):
    """A pytree objective with its minimum at w = 0.5, b = -0.2."""
    return jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum((p["b"] + 0.2) ** 2)


def params0(dtype=jnp.float32):
    return {"w": jnp.zeros((2, 3), dtype), "b": jnp.ones((2,), dtype)}


def same_layout(a, b) -> bool:
    """Same pytree structure, and every leaf the same shape and dtype."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    flags = jax.tree.map(
        lambda u, v: (jnp.shape(u), jnp.result_type(u)) == (jnp.shape(v), jnp.result_type(v)),
        a,
        b,
    )
    return all(jax.tree.leaves(flags))


TX = optimus.optax.optimus()  # shared, so that tests reuse one compiled step


@functools.partial(jax.jit, static_argnums=(0, 1))
def jitted_step(tx, f, p, state):
    value, grads = jax.value_and_grad(f)(p)
    updates, state = tx.update(grads, state, p, value=value)
    return optax.apply_updates(p, updates), state


def run_python_loop(tx, p, steps, f=quad):
    """A plain Python training loop, each step jitted as users do (compiled once per tx)."""
    state = tx.init(p)
    for _ in range(steps):
        p, state = jitted_step(tx, f, p, state)
    return p, state


# ---------------------------------------------------------------------------------------------
# optax


def test_optax_is_an_extra_args_transformation_that_minimises_a_pytree():
    tx = TX
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    p, state = run_python_loop(tx, params0(), 15)
    assert isinstance(state, OptimusState)
    assert float(quad(p)) < 1e-8
    assert jax.tree.structure(p) == jax.tree.structure(params0())


def test_optax_module_import_forms():
    import optimus.optax as ox

    assert ox.optimus is optimus.optax.optimus


def test_optax_state_layout_is_constant_and_jit_compiles_once():
    tx = optimus.optax.optimus()
    traces = []

    def step(p, state):
        traces.append(1)
        value, grads = jax.value_and_grad(quad)(p)
        updates, state = tx.update(grads, state, p, value=value)
        return optax.apply_updates(p, updates), state

    step = jax.jit(step)
    p = params0()
    state0 = tx.init(p)
    state = state0
    for _ in range(6):
        p, state = step(p, state)
        assert same_layout(state, state0)
        assert same_layout(p, params0())
    assert len(traces) == 1
    assert float(quad(p)) < 1e-8


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_optax_preserves_dtype(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        tx = optimus.optax.optimus()
        p = params0(dtype)
        state0 = tx.init(p)
        value, grads = jax.value_and_grad(quad)(p)
        updates, state = jax.jit(lambda g, s, q, v: tx.update(g, s, q, value=v))(
            grads, state0, p, value
        )
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
        assert same_layout(state, state0)
        floats = [a for a in jax.tree.leaves(state) if jnp.issubdtype(a.dtype, jnp.floating)]
        assert floats and all(a.dtype == dtype for a in floats)


def test_optax_inside_lax_scan_matches_python_loop():
    tx = optimus.optax.optimus()

    def body(carry, _):
        p, state = carry
        value, grads = jax.value_and_grad(quad)(p)
        updates, state = tx.update(grads, state, p, value=value)
        return (optax.apply_updates(p, updates), state), value

    p0 = params0()
    (p_scan, _), values = jax.jit(lambda c: jax.lax.scan(body, c, None, length=8))(
        (p0, tx.init(p0))
    )
    p_loop, _ = run_python_loop(tx, p0, 8)
    assert values.shape == (8,)
    assert values[-1] < 1e-3 * values[0]
    for a, b in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p_loop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def lbfgs_style_loop(opt, f, p, steps):
    """Code written for optax.lbfgs (value_and_grad_from_state + value/grad/value_fn)."""
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(p, state):
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(p, updates), state

    state = opt.init(p)
    for _ in range(steps):
        p, state = step(p, state)
    return p


def test_optax_drops_into_lbfgs_code_with_value_and_grad_from_state():
    p0 = params0()
    p_lbfgs = lbfgs_style_loop(optax.lbfgs(), quad, p0, 10)
    p_opt = lbfgs_style_loop(TX, quad, p0, 10)
    assert float(quad(p_lbfgs)) < 1e-8
    assert float(quad(p_opt)) < 1e-8
    # the cache is never valid (+inf), so value_and_grad_from_state evaluates f: same iterates
    p_plain, _ = run_python_loop(TX, p0, 10)
    for a, b in zip(jax.tree.leaves(p_opt), jax.tree.leaves(p_plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_optax_chain_composes():
    p0 = params0()
    chained = optax.chain(optax.clip_by_global_norm(1e6), TX)
    p_chain, state = run_python_loop(chained, p0, 6)
    p_alone, _ = run_python_loop(TX, p0, 6)
    assert isinstance(state[1], OptimusState)
    for a, b in zip(jax.tree.leaves(p_chain), jax.tree.leaves(p_alone), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # an active clip changes the gradient the optimizer sees, hence the iterates
    p_clip, _ = run_python_loop(optax.chain(optax.clip_by_global_norm(1e-2), TX), p0, 2)
    assert not np.allclose(p_clip["b"], run_python_loop(TX, p0, 2)[0]["b"])


def test_optax_classical_method_matches_optax_adam():
    p0 = params0()
    p_ours, _ = run_python_loop(optimus.optax.optimus("adam", learning_rate=0.1), p0, 5)
    state = optax.adam(0.1).init(p0)
    p = p0
    for _ in range(5):
        updates, state = optax.adam(0.1).update(jax.grad(quad)(p), state, p)
        p = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_optax_misuse_gives_clear_messages():
    # the checks live in the wrapper, the same for every method: adam is the cheapest to run
    tx = optimus.optax.optimus("adam", learning_rate=0.1)
    p = params0()
    state = tx.init(p)
    value, grads = jax.value_and_grad(quad)(p)
    with pytest.raises(ValueError, match="needs the objective value"):
        tx.update(grads, state, p)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(grads, state, value=value)
    with pytest.raises(Exception, match="value_fn.*disagrees with value"):
        tx.update(grads, state, p, value=value, value_fn=lambda q: quad(q) + 1.0)
    with pytest.raises(Exception, match="value_fn.*disagrees with value"):
        jax.jit(lambda g, s, q, v: tx.update(g, s, q, value=v, value_fn=lambda r: 2 * quad(r)))(
            grads, state, p, value
        )
    tx.update(grads, state, p, value=value, value_fn=quad)  # agreeing value_fn is fine
    with pytest.raises(TypeError, match="share one dtype"):
        tx.init({"w": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.bfloat16)})
    with pytest.raises(TypeError, match="floating-point"):
        tx.init(jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="grads"):
        tx.update(jax.tree.map(lambda a: a.astype(jnp.bfloat16), grads), state, p, value=value)
    with pytest.raises(ValueError, match="do not match the state"):
        tx.update(grads, state, {"w": p["w"]}, value=value)
    with pytest.raises(TypeError, match="real scalar"):
        tx.update(grads, state, p, value=jnp.ones(3))
    with pytest.raises(ValueError, match="unknown method"):
        optimus.optax.optimus("newton")


def test_optax_learned_rule_options_and_no_restart_by_default():
    # an optax loop keeps the last point: restarts (on in minimize) are off unless asked for
    def run(**options):
        tx = optimus.optax.optimus(**options)

        @jax.jit
        def step(p, state):
            value, grads = jax.value_and_grad(quad)(p)
            updates, state = tx.update(grads, state, p, value=value)
            return optax.apply_updates(p, updates), state

        p = params0()
        state = tx.init(p)
        values = []
        for _ in range(60):
            p, state = step(p, state)
            values.append(float(quad(p)))
        return np.array(values)

    plain = run()
    assert plain[-1] <= 1e-10 and np.all(plain[20:] <= 1e-10)
    restarted = run(restart=0.1)
    assert np.max(restarted[20:]) > 1e-6  # a restart moves away from the converged point
    # the smoothing phase is off in an optax loop too
    tx = optimus.optax.optimus()
    assert tx.init(params0()).inner.__class__.__name__ == "AcceptState"
    with pytest.raises(ValueError, match="not an update-rule field"):
        optimus.optax.optimus(learning_rate=0.1)


# ---------------------------------------------------------------------------------------------
# scipy

MAXITER = 30  # one budget for every scipy test: one compilation of the host step


def test_scipy_method_returns_a_genuine_optimize_result():
    res = scipy.optimize.minimize(
        rosen, np.zeros(4), jac=rosen_der, method=optimus.scipy_method, options={"maxiter": 60}
    )
    assert type(res) is scipy.optimize.OptimizeResult
    assert res.success and res.fun < 1e-6
    assert res.x.dtype == np.float64 and res.x.shape == (4,)
    assert res.nfev >= res.nit >= 1 and res.jac.shape == (4,)
    assert res.fun == pytest.approx(rosen(res.x), rel=1e-3, abs=1e-9)


def test_scipy_jac_forms_agree():
    kw = dict(method=optimus.scipy_method, options={"maxiter": MAXITER})
    r1 = scipy.optimize.minimize(rosen, np.zeros(4), jac=rosen_der, **kw)
    r2 = scipy.optimize.minimize(lambda x: (rosen(x), rosen_der(x)), np.zeros(4), jac=True, **kw)
    np.testing.assert_array_equal(r1.x, r2.x)
    # a jax.numpy objective without jac: JAX differentiates it
    r3 = scipy.optimize.minimize(lambda x, c: jnp.sum((x - c) ** 2), np.zeros(4), args=(0.3,), **kw)
    np.testing.assert_allclose(r3.x, 0.3, atol=1e-4)


def test_scipy_callbacks_both_forms_and_stop_iteration():
    kw = dict(jac=rosen_der, method=optimus.scipy_method, options={"maxiter": MAXITER})
    seen_new, seen_old = [], []
    scipy.optimize.minimize(
        rosen,
        np.zeros(4),
        callback=lambda intermediate_result: seen_new.append(intermediate_result),
        **kw,
    )
    res = scipy.optimize.minimize(rosen, np.zeros(4), callback=lambda xk: seen_old.append(xk), **kw)
    assert len(seen_new) == len(seen_old) == res.nit
    assert isinstance(seen_new[0], scipy.optimize.OptimizeResult)
    assert {"x", "fun"} <= set(seen_new[0])
    assert isinstance(seen_old[0], np.ndarray) and seen_old[0].shape == (4,)
    np.testing.assert_allclose(seen_new[-1].x, seen_old[-1])

    def stop(intermediate_result):
        if intermediate_result.nit >= 3:
            raise StopIteration

    res = scipy.optimize.minimize(rosen, np.zeros(4), callback=stop, **kw)
    assert res.nit == 3 and not res.success and res.status == 99
    assert "StopIteration" in res.message


def test_scipy_options_bounds_and_return_all():
    res = scipy.optimize.minimize(
        rosen,
        np.zeros(4),
        jac=rosen_der,
        method=optimus.scipy_method,
        bounds=[(-2.0, 2.0)] * 4,
        options={"maxiter": MAXITER, "return_all": True, "optimizer": "lbfgs"},
        tol=1e-4,
    )
    assert res.method == "lbfgs" and res.success
    assert len(res.allvecs) == res.nit + 1  # x0 first, as scipy's BFGS
    np.testing.assert_array_equal(res.allvecs[0], np.zeros(4))
    np.testing.assert_array_equal(res.allvecs[-1], res.x)
    assert np.all(np.abs(res.x) <= 2.0)
    assert res.fun < 1e-3


def test_scipy_misuse_gives_clear_messages():
    kw = dict(method=optimus.scipy_method)
    with pytest.raises(ValueError, match=r"unsupported option.*'xatol'.*supported options"):
        scipy.optimize.minimize(rosen, np.zeros(3), jac=rosen_der, options={"xatol": 1}, **kw)
    with pytest.raises(ValueError, match="maxiter.*steps"):
        scipy.optimize.minimize(
            rosen, np.zeros(3), jac=rosen_der, options={"maxiter": 5, "steps": 5}, **kw
        )
    with pytest.raises(TypeError, match="needs gradients"):
        scipy.optimize.minimize(rosen, np.zeros(3), **kw)  # NumPy objective, no jac
    with pytest.raises(ValueError, match="finite differences"):
        optimus.scipy_method(rosen, np.zeros(3), jac="2-point")
    with pytest.raises(ValueError, match="constraints"):
        scipy.optimize.minimize(
            rosen,
            np.zeros(3),
            jac=rosen_der,
            constraints=[{"type": "eq", "fun": lambda x: x[0]}],
            **kw,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimus.scipy_method(
            rosen, np.zeros(3), jac=rosen_der, hess=lambda x: np.eye(3), maxiter=MAXITER
        )
    assert any("Hessian" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------
# optimistix


def test_optimistix_minimise_pytree():
    fn = lambda y, args: jnp.sum((y["a"] - args) ** 2) + jnp.sum(y["b"] ** 2)  # noqa: E731
    y0 = {"a": jnp.zeros(3), "b": jnp.ones(2)}
    solver = optimus.OptimusMinimiser()
    assert isinstance(solver, optx.AbstractMinimiser)
    sol = optx.minimise(fn, solver, y0, args=0.5, max_steps=100)
    assert sol.result == optx.RESULTS.successful
    np.testing.assert_allclose(sol.value["a"], 0.5, atol=1e-3)
    np.testing.assert_allclose(sol.value["b"], 0.0, atol=1e-3)
    assert int(sol.stats["num_steps"]) < 100


def test_optimistix_takes_update_rule_options():
    solver = optimus.OptimusMinimiser(restart=0.0)
    assert solver.params.config.restart == 0.0
    with pytest.raises(ValueError, match="not an update-rule field"):
        optimus.OptimusMinimiser(learning_rate=0.1)


def test_optimistix_nonfinite_and_max_steps():
    bad = lambda y, args: jnp.sum(jnp.log(y))  # noqa: E731  (NaN at negative y)
    solver = optimus.OptimusMinimiser("sgd", learning_rate=0.1)  # any method: cheap to compile
    sol = optx.minimise(bad, solver, -jnp.ones(2), max_steps=10, throw=False)
    assert sol.result == optx.RESULTS.nonfinite
    rb = lambda y, args: jnp.sum(100 * (y[1:] - y[:-1] ** 2) ** 2 + (1 - y[:-1]) ** 2)  # noqa: E731
    sol = optx.minimise(rb, optimus.OptimusMinimiser(), jnp.zeros(4), max_steps=3, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    # the returned point is the best evaluated one
    assert float(rb(sol.value, None)) == pytest.approx(float(sol.stats["best_fun"]))


def test_optimistix_is_imported_lazily():
    code = (
        "import sys, optimus, optimus.optax; "
        "assert 'optimistix' not in sys.modules; "
        "optimus.OptimusMinimiser; assert 'optimistix' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute"):
        optimus.NotAThing  # noqa: B018


# ---------------------------------------------------------------------------------------------
# pytrees in minimize


def test_minimize_accepts_pytrees_and_equinox_modules():
    res = optimus.minimize(quad, params0(), steps=20)
    assert res.success and res.fun < 1e-8
    assert jax.tree.structure(res.x) == jax.tree.structure(params0())

    class Model(eqx.Module):
        w: jax.Array
        b: jax.Array

    res = optimus.minimize(
        lambda m: quad({"w": m.w, "b": m.b}), Model(**params0()), method="lbfgs", steps=20
    )
    assert isinstance(res.x, Model) and res.fun < 1e-8
