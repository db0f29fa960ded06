"""Tests for optimus.functions: canonical test functions, registry, problems, task family."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimus import functions as F

SMOOTH = {"sphere", "quadratic", "rosenbrock", "dixon_price", "powell"}
N_MIN, N_MAX, BATCH = 2, 32, 256  # the sampled meta-training batch
PAD = 12  # padded size for the function-level float64 tests (one compilation per function)


@functools.cache
def _vg(name: str):
    """Jitted value_and_grad of a canonical function, shared by the tests (n is traced)."""
    return jax.jit(jax.value_and_grad(F.get(name).fn))


def _dims(name: str, dims=(2, 4, 8, 12)) -> list[int]:
    m = F.get(name).dim_multiple
    return [d for d in dims if d % m == 0]


def _random_in_domain(rng: np.random.Generator, name: str, n: int, shrink: float = 1.0):
    lo, hi = F.get(name).domain(n)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * shrink
    return rng.uniform(mid - half, mid + half, size=n)


# ---------------------------------------------------------------------------------------
# independent float64 reference implementations (plain Python loops, 1-based formulas)
# ---------------------------------------------------------------------------------------


def _ref(name: str, x: np.ndarray) -> float:
    x = [float(v) for v in x]
    d = len(x)
    if name == "sphere":
        return sum(v * v for v in x)
    if name == "quadratic":
        lam = [1.0] if d == 1 else [1e4 ** (i / (d - 1)) for i in range(d)]
        return 0.5 * sum(lam[i] * x[i] ** 2 for i in range(d))
    if name == "rosenbrock":
        return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (x[i] - 1) ** 2 for i in range(d - 1))
    if name == "dixon_price":
        return (x[0] - 1) ** 2 + sum(
            i * (2 * x[i - 1] ** 2 - x[i - 2]) ** 2 for i in range(2, d + 1)
        )
    if name == "powell":
        total = 0.0
        for k in range(1, d // 4 + 1):
            a, b, c, e = x[4 * k - 4], x[4 * k - 3], x[4 * k - 2], x[4 * k - 1]
            total += (a + 10 * b) ** 2 + 5 * (c - e) ** 2 + (b - 2 * c) ** 4 + 10 * (a - e) ** 4
        return total
    if name == "rastrigin":
        return 10 * d + sum(v * v - 10 * math.cos(2 * math.pi * v) for v in x)
    if name == "levy":
        w = [1 + (v - 1) / 4 for v in x]
        total = math.sin(math.pi * w[0]) ** 2
        for i in range(d - 1):
            total += (w[i] - 1) ** 2 * (1 + 10 * math.sin(math.pi * w[i] + 1) ** 2)
        return total + (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    if name == "ackley":
        s1 = sum(v * v for v in x) / d
        s2 = sum(math.cos(2 * math.pi * v) for v in x) / d
        return -20 * math.exp(-0.2 * math.sqrt(s1)) - math.exp(s2) + 20 + math.e
    if name == "griewank":
        prod = 1.0
        for i, v in enumerate(x, start=1):
            prod *= math.cos(v / math.sqrt(i))
        return sum(v * v for v in x) / 4000 - prod + 1
    if name == "perm":
        total = 0.0
        for i in range(1, d + 1):
            inner = sum((j + 10) * (x[j - 1] ** i - j ** (-i)) for j in range(1, d + 1))
            total += inner**2
        return total
    raise AssertionError(name)


def _fd_grad(f, x: np.ndarray, n: int | None = None, rel: float = 1e-6) -> np.ndarray:
    """Central finite differences of f at x in the first n coordinates (float64). Eager calls:
    they reuse the function's compiled code for this shape."""
    n = x.shape[0] if n is None else n
    g = np.zeros(n)
    for i in range(n):
        e = np.zeros_like(x)
        e[i] = rel * max(1.0, abs(x[i]))
        g[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * e[i])
    return g


def _pad_junk(rng: np.random.Generator, x: np.ndarray, size: int = PAD) -> np.ndarray:
    """x followed by large random junk up to ``size``."""
    return np.concatenate([x, rng.normal(scale=1e3, size=size - x.shape[0])])


def _assert_grad_close(g, fd):
    g, fd = np.asarray(g), np.asarray(fd)
    scale = np.max(np.abs(fd)) + 1e-12
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * scale)


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------


def test_registry_contents_and_flags():
    assert set(F.NAMES) == {
        "sphere",
        "quadratic",
        "rosenbrock",
        "dixon_price",
        "powell",
        "rastrigin",
        "levy",
        "ackley",
        "griewank",
        "perm",
    }
    assert tuple(F.FUNCTIONS) == F.NAMES
    assert {nm for nm in F.NAMES if F.get(nm).smooth} == SMOOTH
    assert {nm for nm in F.NAMES if F.get(nm).multimodal} == {
        "rastrigin",
        "levy",
        "ackley",
        "griewank",
    }
    for nm in F.NAMES:
        tf = F.get(nm)
        assert tf.name == nm and tf.f_min == 0.0
        assert tf.dim_multiple == (4 if nm == "powell" else 1)
        m = tf.minimizer(8)
        assert m.dtype == np.float64 and m.shape == (8,)
    assert F.get("rastrigin").domain(3) == (-5.12, 5.12)
    assert F.get("ackley").domain(3) == (-32.768, 32.768)
    assert F.get("griewank").domain(3) == (-600.0, 600.0)
    assert F.get("powell").domain(4) == (-4.0, 5.0)
    assert F.get("perm").domain(7) == (-7.0, 7.0)
    np.testing.assert_allclose(F.get("perm").minimizer(4), [1, 1 / 2, 1 / 3, 1 / 4])
    np.testing.assert_allclose(F.get("dixon_price").minimizer(3), [1, 2**-0.5, 2**-0.75])
    np.testing.assert_array_equal(F.get("levy").minimizer(3), np.ones(3))


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="rastrigin") as info:
        F.get("rastrigan")
    assert all(nm in str(info.value) for nm in F.NAMES)


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", F.NAMES)
def test_value_at_minimizer_is_zero_and_positive_elsewhere(name):
    tf = F.get(name)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for n in _dims(name):
            xs = jnp.asarray(_pad_junk(rng, tf.minimizer(n)))
            assert abs(float(tf.fn(xs, n))) <= 1e-12, (name, n)
            for _ in range(3):
                x = jnp.asarray(_pad_junk(rng, _random_in_domain(rng, name, n)))
                assert float(tf.fn(x, n)) > 1e-6, (name, n)
        assert abs(float(tf.fn(jnp.asarray(tf.minimizer(PAD))))) <= 1e-12  # n=None: all of x


@pytest.mark.parametrize("name", F.NAMES)
def test_matches_reference_definition(name):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        for n in _dims(name, (1, 2, 3, 4, 7, 8, 12)):
            for _ in range(3):
                x = _random_in_domain(rng, name, n)
                got = float(F.get(name).fn(jnp.asarray(_pad_junk(rng, x)), n))
                np.testing.assert_allclose(got, _ref(name, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", F.NAMES)
def test_float32_is_accurate_near_the_minimizer(name):
    """In float32 the value a little off the minimizer keeps its relative accuracy: no
    cancellation of 1 - cos or 1 - prod(cos) (Griewank's plain form returned 7.5e-11 for
    2.0e-8 at x_i = 1e-4, n = 30, and flattened its curvature near the minimum)."""
    rng = np.random.default_rng(7)
    tf = F.get(name)
    for n in _dims(name, (4, 8, 12)):
        for scale in (1e-2, 1e-3, 1e-4):
            x = tf.minimizer(n) + scale * rng.uniform(0.5, 1.0, n) * rng.choice([-1, 1], n)
            want = _ref(name, x)  # float64 definition
            x32 = jnp.asarray(x, jnp.float32)
            want32 = _ref(name, np.asarray(x32, np.float64))  # the float32 point, exactly
            got = float(tf.fn(x32, n))
            assert want > 0
            np.testing.assert_allclose(got, want32, rtol=2e-3, err_msg=f"{name} n={n} {scale}")


def test_known_values():
    assert float(F.powell(jnp.array([3.0, -1.0, 0.0, 1.0]))) == pytest.approx(215.0)
    assert float(F.rastrigin(jnp.array([0.5, 0.5]))) == pytest.approx(40.5)
    assert float(F.rosenbrock(jnp.array([0.0, 0.0]))) == pytest.approx(1.0)
    assert float(F.dixon_price(jnp.array([1.0, 1.0]))) == pytest.approx(2.0)
    # quadratic eigenvalues log-spaced 1 .. 1e4 over the valid coordinates
    assert float(F.quadratic(jnp.array([0.0, 0.0, 1.0]))) == pytest.approx(0.5e4, rel=1e-5)
    assert float(F.quadratic(jnp.array([0.0, 1.0, 0.0]))) == pytest.approx(0.5e2, rel=1e-5)
    assert float(F.quadratic(jnp.array([0.0, 1.0, 5.0]), 2)) == pytest.approx(0.5e4, rel=1e-5)


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", F.NAMES)
def test_gradient_matches_finite_differences_canonical(name):
    rng = np.random.default_rng(2)
    n = 8
    fn = F.get(name).fn
    with jax.enable_x64(True):
        for _ in range(3):
            # shrink so perm stays moderate; all functions are smooth at these points a.s.
            x = _random_in_domain(rng, name, n, shrink=0.5 if name == "perm" else 1.0)
            xp = _pad_junk(rng, x)
            g = np.asarray(_vg(name)(jnp.asarray(xp), n)[1])
            np.testing.assert_array_equal(g[n:], 0.0)
            _assert_grad_close(g[:n], _fd_grad(lambda v: fn(v, n), xp, n))


@pytest.mark.parametrize("name", F.NAMES)
def test_gradient_matches_finite_differences_transformed(name):
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        p = F.make_problem(
            name, 4, variant="transformed", key=jax.random.key(3), pad_to=8, dtype=jnp.float64
        )
        vg = jax.jit(jax.value_and_grad(p))  # one compilation for values and gradients
        for _ in range(3):
            x = np.zeros(8)
            lo, hi = F.get(name).domain(4)
            x[:4] = rng.uniform(lo, hi, size=4) if name != "perm" else rng.uniform(-1, 1, 4)
            g = np.asarray(vg(jnp.asarray(x))[1])
            np.testing.assert_array_equal(g[4:], 0.0)
            _assert_grad_close(g[:4], _fd_grad(lambda v: vg(v)[0], x, 4))


def test_ackley_gradient_at_zero_is_finite():
    val, g = _vg("ackley")(jnp.zeros(PAD, jnp.float32), 5)
    assert float(val) == 0.0
    np.testing.assert_array_equal(np.asarray(g), 0.0)  # finite (safe sqrt), not NaN
    p = F.make_problem("ackley", 3, variant="transformed", key=jax.random.key(0), pad_to=8)
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(p))(p.x_opt))))


# ---------------------------------------------------------------------------------------
# padding / masking / dispatch
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", F.NAMES)
def test_padding_invariance(name):
    rng = np.random.default_rng(4)
    n = 4
    fn = F.get(name).fn
    vg = _vg(name)
    with jax.enable_x64(True):
        x = _random_in_domain(rng, name, n, shrink=0.9)
        ref_val, ref_grad = vg(jnp.asarray(x))  # unpadded, n = None
        ref_val, ref_grad = float(ref_val), np.asarray(ref_grad)
        np.testing.assert_allclose(ref_val, _ref(name, x), rtol=1e-10, atol=1e-10)
        xp = jnp.asarray(_pad_junk(rng, x))
        # even non-finite junk in the padding is ignored
        xnan = xp.at[n:].set(jnp.nan).at[-1].set(jnp.inf)
        for xx, nn in ((xp, n), (xp, np.int32(n)), (xnan, jnp.int32(n))):
            val, g = vg(xx, nn)
            np.testing.assert_allclose(float(val), ref_val, rtol=1e-12, atol=1e-14)
            g = np.asarray(g)
            np.testing.assert_array_equal(g[n:], 0.0)
            np.testing.assert_allclose(g[:n], ref_grad, rtol=1e-12, atol=1e-12 * (1 + ref_val))
        np.testing.assert_allclose(float(fn(xp, n)), ref_val, rtol=1e-12, atol=1e-14)


def test_powell_counts_only_complete_groups():
    x = jnp.arange(1.0, 11.0)
    assert float(F.powell(x, 6)) == pytest.approx(float(F.powell(x[:4])))
    assert float(F.powell(x, 8)) == pytest.approx(float(F.powell(x[:8])))
    g = np.asarray(jax.grad(F.powell)(x, 6))
    np.testing.assert_array_equal(g[4:], 0.0)


def test_n_out_of_range_raises():
    with pytest.raises(ValueError):
        F.sphere(jnp.ones(3), 4)
    with pytest.raises(ValueError):
        F.sphere(jnp.ones(3), 0)


def test_evaluate_by_id_equals_direct_call():
    rng = np.random.default_rng(5)
    size = 8
    xs = jnp.asarray(rng.uniform(-2, 2, size=(len(F.NAMES), size)), jnp.float32)
    ns = jnp.asarray([4 if nm == "powell" else 5 for nm in F.NAMES], jnp.int32)
    direct = np.array([float(F.get(nm).fn(xs[i], int(ns[i]))) for i, nm in enumerate(F.NAMES)])
    by_int = np.array([float(F.evaluate(i, xs[i], int(ns[i]))) for i in range(len(F.NAMES))])
    np.testing.assert_allclose(by_int, direct, rtol=1e-6)
    ids = jnp.arange(len(F.NAMES), dtype=jnp.int32)
    batched = np.asarray(jax.jit(jax.vmap(F.evaluate))(ids, xs, ns))
    np.testing.assert_allclose(batched, direct, rtol=1e-5)
    one = jax.jit(F.evaluate)(jnp.int32(2), xs[2], ns[2])
    np.testing.assert_allclose(float(one), direct[2], rtol=1e-5)
    with pytest.raises(ValueError):
        F.evaluate(len(F.NAMES), xs[0])


def test_perm_overflow_gives_inf_not_nan_and_finite_gradient():
    rng = np.random.default_rng(6)
    n = 40
    x = jnp.asarray(rng.uniform(-n, n, size=n), jnp.float32)
    val = F.perm(x)
    assert float(val) == np.inf
    g = np.asarray(jax.grad(F.perm)(x))
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    # small n: faithful (equals the reference) in float32
    x8 = rng.uniform(-8, 8, size=8)
    np.testing.assert_allclose(
        float(F.perm(jnp.asarray(x8, jnp.float32))), _ref("perm", x8), rtol=1e-4
    )


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------


def _assert_orthogonal(r, tol):
    r = np.asarray(r, np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(r.shape[0]), atol=tol)


@pytest.mark.parametrize("name", F.NAMES)
def test_transformed_problem(name):
    n = 4
    with jax.enable_x64(True):
        p = F.make_problem(
            name, n, variant="transformed", key=jax.random.key(7), pad_to=8, dtype=jnp.float64
        )
        lo, hi = F.get(name).domain(n)
        assert float(p.lo) == lo and float(p.hi) == hi
        assert abs(float(p(p.x_opt))) <= 1e-12
        assert float(p.f_star) == 0.0
        _assert_orthogonal(p.rotation, 1e-12)
        r = np.asarray(p.rotation)
        np.testing.assert_array_equal(r[n:, n:], np.eye(8 - n))
        np.testing.assert_array_equal(r[:n, n:], 0.0)
        np.testing.assert_array_equal(r[n:, :n], 0.0)
        assert not np.allclose(r[:n, :n], np.eye(n))  # a real rotation
        xo = np.asarray(p.x_opt)
        assert np.all((xo[:n] >= lo) & (xo[:n] <= hi)) and np.all(xo[n:] == 0)
        x = p.sample_x0(jax.random.key(8))
        assert float(p(x)) > 0
        # rotated: the canonical value at x differs from the problem value
        q = F.make_problem(
            name, n, variant="transformed", key=jax.random.key(9), pad_to=8, dtype=jnp.float64
        )
        assert not np.allclose(np.asarray(q.x_opt), xo)


def test_canonical_problem_equals_function():
    rng = np.random.default_rng(10)
    with jax.enable_x64(True):
        for name in F.NAMES:
            n = 4
            p = F.make_problem(name, n, pad_to=8, f_scale=3.0, dtype=jnp.float64)
            np.testing.assert_array_equal(np.asarray(p.rotation), np.eye(8))
            np.testing.assert_array_equal(np.asarray(p.x_opt)[:n], F.get(name).minimizer(n))
            x = _random_in_domain(rng, name, n)
            xp = jnp.asarray(np.concatenate([x, [7.0, -3.0, 1e3, np.nan]]))
            np.testing.assert_allclose(
                float(p(xp)), 3.0 * float(F.get(name).fn(jnp.asarray(x))), rtol=1e-10
            )
            assert int(p.func_id) == F.NAMES.index(name) and int(p.n) == n


@pytest.mark.parametrize("name", ["rastrigin", "perm", "rosenbrock"])
def test_offcentre_problem(name):
    n = 6
    p = F.make_problem(name, n, variant="offcentre", key=jax.random.key(11), pad_to=8)
    lo, hi = F.get(name).domain(n)
    xo = np.asarray(p.x_opt, np.float64)[:n]
    assert np.all((xo >= lo) & (xo <= hi))
    edge = np.minimum(xo - lo, hi - xo)
    assert np.all(edge <= 0.1 * (hi - lo) + 1e-6)
    assert np.any(xo > 0.5 * (lo + hi)) and np.any(xo < 0.5 * (lo + hi))  # both sides used
    assert abs(float(p(p.x_opt))) <= 1e-5
    _assert_orthogonal(p.rotation, 1e-5)


def test_problem_unit_maps_and_sampling():
    p = F.make_problem("levy", 3, variant="transformed", key=jax.random.key(12), pad_to=8)
    np.testing.assert_array_equal(np.asarray(p.mask), np.arange(8) < 3)
    lo, hi = -10.0, 10.0
    np.testing.assert_allclose(p.from_unit(-jnp.ones(8))[:3], lo)
    np.testing.assert_allclose(p.from_unit(jnp.ones(8))[:3], hi)
    z = jax.random.uniform(jax.random.key(13), (8,), minval=-1, maxval=1) * p.mask
    np.testing.assert_allclose(p.to_unit(p.from_unit(z)), z, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(p.from_unit(z))[3:], 0.0)
    assert float(p.unit_objective(p.to_unit(p.x_opt))) <= 1e-4
    x0s = jax.jit(jax.vmap(p.sample_x0))(jax.random.split(jax.random.key(14), BATCH))
    x0s = np.asarray(x0s)
    assert np.all((x0s[:, :3] >= lo) & (x0s[:, :3] <= hi)) and np.all(x0s[:, 3:] == 0)
    assert x0s[:, :3].std() > 3.0  # spread over the box


def test_problems_stack_and_vmap():
    ps = [
        F.make_problem(nm, 4, variant="transformed", key=jax.random.key(i), pad_to=8)
        for i, nm in enumerate(("sphere", "ackley", "powell"))
    ]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *ps)
    x = jnp.linspace(-1.0, 1.0, 8)
    vals = np.asarray(jax.jit(jax.vmap(lambda p: p(x)))(batch))
    np.testing.assert_allclose(vals, [float(p(x)) for p in ps], rtol=1e-5)


# ---------------------------------------------------------------------------------------
# task distribution
# ---------------------------------------------------------------------------------------


@jax.jit
def _batch_eval(problems, x):
    """Per problem: value at x_opt, value and gradient at x (vmapped lax.switch)."""

    def one(p, xx):
        f, g = jax.value_and_grad(p)(xx)
        return p(p.x_opt), f, g

    return jax.vmap(one)(problems, x)


@pytest.fixture(scope="module")
def sampled():
    keys = jax.random.split(jax.random.key(15), BATCH)[:-2]
    ps = jax.jit(jax.vmap(lambda k: F.sample_problem(k, n_min=N_MIN, n_max=N_MAX)))(keys)
    # two hand-made problems appended: perm's branch will see griewank's large coordinates
    pg = F.make_problem("griewank", N_MAX, variant="transformed", key=jax.random.key(1))
    pp = F.make_problem("perm", 4, variant="transformed", key=jax.random.key(2), pad_to=N_MAX)
    ps = jax.tree.map(lambda a, b, c: jnp.concatenate([a, b[None], c[None]]), ps, pg, pp)
    x0 = jax.vmap(lambda p, k: p.sample_x0(k))(ps, jax.random.split(jax.random.key(16), BATCH))
    x0 = x0.at[-2].set(jnp.full((N_MAX,), 550.0))
    v_opt, f0, g0 = _batch_eval(ps, x0)
    return ps, pg, pp, x0, np.asarray(v_opt), np.asarray(f0), np.asarray(g0)


def test_sample_problem_batch_under_jit_vmap(sampled):
    ps, _, _, _, v_opt, f0, g0 = sampled
    size = N_MAX
    assert ps.x_opt.shape == (BATCH, size) and ps.rotation.shape == (BATCH, size, size)
    assert ps.x_opt.dtype == jnp.float32
    fid, n = np.asarray(ps.func_id)[:-2], np.asarray(ps.n)[:-2]
    assert set(fid.tolist()) == set(range(len(F.NAMES)))
    assert np.all((n >= N_MIN) & (n <= N_MAX))
    assert len(set(n.tolist())) > 10
    assert np.all(n[fid == F.NAMES.index("powell")] % 4 == 0)
    assert np.all(n[fid == F.NAMES.index("perm")] <= F.PERM_MAX_TRAIN_DIM)
    fs = np.asarray(ps.f_scale)[:-2]
    assert np.all((fs >= 1e-3 * 0.999) & (fs <= 1e3 * 1.001)) and fs.min() < 1e-1 < 1e1 < fs.max()

    assert np.all(np.abs(v_opt[:-2]) <= 1e-5 * np.maximum(fs, 1.0)), v_opt
    assert np.all(np.isfinite(g0))
    mask = np.arange(size)[None, :] < np.asarray(ps.n)[:, None]
    assert np.all(g0[~mask] == 0.0)
    assert np.all(f0 > 0)

    rot = np.asarray(ps.rotation, np.float64)
    eye = np.eye(size)
    err = np.abs(np.einsum("bij,bkj->bik", rot, rot) - eye).max()
    assert err < 1e-5
    for b in range(0, BATCH - 2, 37):
        np.testing.assert_array_equal(rot[b, n[b] :, n[b] :], eye[n[b] :, n[b] :])
    lo, hi, xo = np.asarray(ps.lo)[:-2], np.asarray(ps.hi)[:-2], np.asarray(ps.x_opt)[:-2]
    assert np.all(xo[~mask[:-2]] == 0.0)
    assert np.all((xo >= lo[:, None] - 1e-6) & (xo <= hi[:, None] + 1e-6))
    perm_rows = fid == F.NAMES.index("perm")
    np.testing.assert_array_equal(hi[perm_rows], n[perm_rows].astype(np.float32))


def test_vmapped_switch_gradients_do_not_leak_nan(sampled):
    # under vmap, lax.switch evaluates every branch; perm's branch sees the griewank problem's
    # coordinates (~550, would overflow): the batched gradients must stay exact and finite.
    _, pg, pp, x0, _, f0, g0 = sampled
    fg, gg = jax.value_and_grad(pg)(x0[-2])
    fp, gp = jax.value_and_grad(pp)(x0[-1])
    np.testing.assert_allclose(f0[-2:], [float(fg), float(fp)], rtol=1e-5)
    np.testing.assert_allclose(g0[-2], gg, rtol=1e-5, atol=1e-6 * np.abs(gg).max())
    np.testing.assert_allclose(g0[-1], gp, rtol=1e-5, atol=1e-6 * np.abs(gp).max())
    assert np.all(np.isfinite(g0[-2:])) and np.any(g0[-2] != 0)


def test_sample_problem_options():
    keys = jax.random.split(jax.random.key(17), BATCH)
    names = ("powell", "sphere", "ackley")
    ps = jax.vmap(
        lambda k: F.sample_problem(
            k, names=names, n_min=2, n_max=9, variants=("canonical", "offcentre")
        )
    )(keys)
    fid, n = np.asarray(ps.func_id), np.asarray(ps.n)
    assert set(fid.tolist()) == {F.NAMES.index(nm) for nm in names}
    assert np.all((n >= 2) & (n <= 9))
    assert np.all(n[fid == F.NAMES.index("powell")] >= 4)
    assert np.all(n[fid == F.NAMES.index("powell")] % 4 == 0)
    rot, xo = np.asarray(ps.rotation), np.asarray(ps.x_opt)
    valid = np.arange(9)[None, :] < n[:, None]
    canonical = np.all(rot == np.eye(9)[None], axis=(1, 2))
    assert 0.3 < canonical.mean() < 0.7  # both variants drawn
    # canonical: identity rotation and the canonical minimizer (0 for these three functions)
    assert np.all(xo[canonical] == 0.0)
    # offcentre: every valid coordinate within the outer 10% of the box
    lo, hi = np.asarray(ps.lo)[:, None], np.asarray(ps.hi)[:, None]
    edge = np.minimum(xo - lo, hi - xo)
    off = ~canonical
    assert np.all((edge <= 0.1 * (hi - lo) + 1e-4)[off][valid[off]])
    assert np.all((edge >= -1e-5)[off][valid[off]])


# ---------------------------------------------------------------------------------------
# errors and dtypes
# ---------------------------------------------------------------------------------------


def test_bad_inputs_raise():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="sphere"):
        F.make_problem("nope", 4)
    with pytest.raises(ValueError, match="transformed"):
        F.make_problem("sphere", 4, variant="rotated", key=key)
    with pytest.raises(ValueError):
        F.make_problem("sphere", 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        F.make_problem("powell", 6)
    with pytest.raises(ValueError):
        F.make_problem("sphere", 6, pad_to=4)
    with pytest.raises(ValueError, match="key"):
        F.make_problem("sphere", 4, variant="transformed")
    with pytest.raises(ValueError, match="key"):
        F.make_problem("sphere", 4, variant="offcentre")
    with pytest.raises(ValueError):
        F.make_problem("sphere", 4, f_scale=0.0)
    with pytest.raises(ValueError):
        F.sample_problem(key, n_max=32, pad_to=16)
    with pytest.raises(ValueError):
        F.sample_problem(key, n_min=10, n_max=5)
    with pytest.raises(ValueError, match="sphere"):
        F.sample_problem(key, names=("sphere", "nope"))
    with pytest.raises(ValueError, match="canonical"):
        F.sample_problem(key, variants=("bad",))
    with pytest.raises(ValueError, match="powell"):
        F.sample_problem(key, names=("powell",), n_min=1, n_max=3)


@pytest.mark.parametrize("name", F.NAMES)
def test_dtype_preserved(name):
    x32 = jnp.linspace(0.1, 0.9, PAD, dtype=jnp.float32)
    val, grad = _vg(name)(x32, 4)
    assert val.dtype == jnp.float32 and grad.dtype == jnp.float32
    with jax.enable_x64(True):
        x64 = jnp.linspace(0.1, 0.9, PAD, dtype=jnp.float64)
        val, grad = _vg(name)(x64, 4)
        assert val.dtype == jnp.float64 and grad.dtype == jnp.float64
        assert F.evaluate(F.NAMES.index(name), x64, 4).dtype == jnp.float64


@pytest.mark.parametrize("name", ["sphere", "perm"])
def test_problem_dtype_preserved(name):
    x32 = jnp.linspace(0.1, 0.9, 8, dtype=jnp.float32)
    p = F.make_problem(name, 4, variant="transformed", key=jax.random.key(1), pad_to=8)
    assert p(x32).dtype == jnp.float32 and p.x_opt.dtype == jnp.float32
    assert p.rotation.dtype == jnp.float32 and p.f_scale.dtype == jnp.float32
    with jax.enable_x64(True):
        x64 = jnp.linspace(0.1, 0.9, 8, dtype=jnp.float64)
        q = F.make_problem(
            name, 4, variant="transformed", key=jax.random.key(1), pad_to=8, dtype=jnp.float64
        )
        assert q(x64).dtype == jnp.float64 and q.rotation.dtype == jnp.float64
        assert q.lo.dtype == jnp.float64 and q.x_opt.dtype == jnp.float64
