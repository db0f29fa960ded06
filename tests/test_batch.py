"""`optimus.minimize_batch`: each problem of a batch solved as `optimus.minimize` solves it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus.nets import NetConfig, build_net
from optimus.result import Status

NET = build_net(NetConfig(width=16, depth=1, num_heads=2), jax.random.key(0))
B, N = 3, 4
TARGETS = jax.random.uniform(jax.random.key(1), (B, N), minval=-1.0, maxval=1.0)
X0 = jax.random.uniform(jax.random.key(2), (B, N), minval=-2.0, maxval=2.0)
# a well-conditioned convex quadratic: trajectories contract, so the rounding differences of
# a batched evaluation do not grow into different results
A = jnp.diag(jnp.linspace(1.0, 3.0, N))


def fit(x, target):
    d = x - target
    return d @ A @ d


def _kw(method):
    if method == "optimus":
        return {"params": NET}
    if method == "adam":
        return {"options": {"learning_rate": 0.1}}
    return {}


@pytest.mark.parametrize("method", ["optimus", "bfgs", "lbfgs", "adam"])
def test_each_problem_matches_minimize(method):
    res = optimus.minimize_batch(fit, X0, (TARGETS,), method=method, steps=40, **_kw(method))
    assert res.batch_size == B
    assert res.x.shape == (B, N) and res.fun.shape == (B,) and res.status.shape == (B,)
    for b in range(B):
        one = optimus.minimize(
            lambda x, t=TARGETS[b]: fit(x, t), X0[b], method=method, steps=40, **_kw(method)
        )
        got = res.result(b)
        assert got.success and one.success
        # both reach the minimum; they agree to rounding, not bitwise (batched reductions)
        np.testing.assert_allclose(got.x, one.x, atol=2e-3)
        if method == "adam":  # slower: far below the start, not yet at the minimum
            assert got.fun < 0.05 * float(fit(X0[b], TARGETS[b]))
        else:
            np.testing.assert_allclose(got.x, TARGETS[b], atol=2e-2)
        assert abs(got.fun - one.fun) <= 1e-3
        assert got.eval_history[0] == pytest.approx(one.eval_history[0], rel=1e-6)


def test_result_fields_and_per_problem_view():
    res = optimus.minimize_batch(fit, X0, (TARGETS,), method="lbfgs", steps=25, gtol=0.0)
    assert res.history.shape == (B, 26)
    assert res.eval_history.shape[0] == B
    assert len(res.message) == B and res.method == "lbfgs"
    for b, one in enumerate(res.results()):
        assert len(one.history) == one.nit + 1
        assert len(one.eval_history) == one.nfev == res.nfev[b] == res.njev[b]
        assert np.all(np.diff(one.eval_history) <= 0)  # best value so far never increases
        assert one.fun == pytest.approx(float(fit(jnp.asarray(one.x), TARGETS[b])), rel=1e-5)
        # the batched arrays are NaN after each problem's own length
        assert np.all(np.isnan(res.eval_history[b, one.nfev :]))
        assert np.all(np.isnan(res.history[b, one.nit + 1 :]))
    assert res.result(-1).fun == res.fun[-1]
    with pytest.raises(IndexError, match="out of range"):
        res.result(B)


def test_shipped_optimus_with_pytree_and_bounds():
    x0 = {"a": X0[:, :2], "b": X0[:, 2:].reshape(B, 2, 1)}

    def f(x, target, weight):
        flat = jnp.concatenate([x["a"], x["b"].reshape(-1)])
        return weight * jnp.sum((flat - target) ** 2)

    res = optimus.minimize_batch(f, x0, (TARGETS, 2.0), steps=60, bounds=(-1.5, 1.5))
    assert res.x["a"].shape == (B, 2) and res.x["b"].shape == (B, 2, 1)
    assert res.success.all()
    assert np.all(res.fun < 1e-6)
    assert res.hess_inv.shape == (B, N, N)
    assert np.all(np.asarray(res.x["a"]) >= -1.5) and np.all(np.asarray(res.x["a"]) <= 1.5)


def test_a_failing_problem_does_not_spoil_the_others(caplog):
    bad = jnp.array([0.0, 1.0, 0.0])  # problem 1 is NaN everywhere

    def f(x, target, flag):
        return fit(x, target) + jnp.where(flag > 0, jnp.nan, 0.0)

    with caplog.at_level("WARNING", logger="optimus.batch"):
        res = optimus.minimize_batch(f, X0, (TARGETS, bad), method="optimus", params=NET)
    assert res.status[1] == Status.NO_FINITE_POINT and not res.success[1]
    np.testing.assert_array_equal(res.x[1], X0[1])
    assert res.success[0] and res.success[2]
    assert np.all(np.isfinite(res.fun[[0, 2]]))
    assert "1 of 3 problems did not succeed (1 NO_FINITE_POINT" in caplog.text


def test_deterministic():
    a = optimus.minimize_batch(fit, X0, (TARGETS,), method="bfgs", steps=10)
    b = optimus.minimize_batch(fit, X0, (TARGETS,), method="bfgs", steps=10)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.eval_history, b.eval_history)


def test_bad_input():
    with pytest.raises(ValueError, match="batch axis of length 2"):
        optimus.minimize_batch(fit, X0, (TARGETS[:2],), method="lbfgs")
    with pytest.raises(TypeError, match="args must be a tuple"):
        optimus.minimize_batch(fit, X0, TARGETS, method="lbfgs")
    with pytest.raises(ValueError, match="leading batch axis"):
        optimus.minimize_batch(lambda x: jnp.sum(x**2), jnp.float32(1.0), method="lbfgs")
    with pytest.raises(ValueError, match="differ"):
        optimus.minimize_batch(
            lambda x: jnp.sum(x["a"] ** 2) + jnp.sum(x["b"] ** 2),
            {"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 2))},
            method="lbfgs",
        )
    with pytest.raises(ValueError, match="must return a scalar"):
        optimus.minimize_batch(lambda x, t: x - t, X0, (TARGETS,), method="lbfgs")
    with pytest.raises(TypeError, match="floating-point"):
        optimus.minimize_batch(fit, jnp.zeros((B, N), jnp.int32), (TARGETS,), method="lbfgs")
    with pytest.raises(ValueError, match="unknown method|method"):
        optimus.minimize_batch(fit, X0, (TARGETS,), method="newton")
    with pytest.raises(ValueError, match="steps"):
        optimus.minimize_batch(fit, X0, (TARGETS,), method="lbfgs", steps=0)
