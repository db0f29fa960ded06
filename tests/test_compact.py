"""The compact form of the learned optimizer's n x n matrices (optimus.nets.compact) against
the dense updates it rewrites, and the rule by which optimus.minimize switches to it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus.nets import compact as C
from optimus.nets import features as F
from optimus.nets import with_rule
from optimus.nets.optimus import NetConfig, precondition_update
from optimus.optimizers.learned import model_init, model_update
from optimus.solve import COMPACT_MIN_RATIO, fit_memory


def _pairs(rng, n, count):
    """Secant pairs of a random SPD quadratic at varying step lengths, with every fifth pair
    of negative curvature (skipped by BFGS, an indefinite update for SR1)."""
    A = rng.normal(size=(n, n))
    A = A @ A.T + 0.1 * np.eye(n)
    for t in range(count):
        s = rng.normal(size=n)
        y = -s if t % 5 == 4 else A @ s * rng.uniform(0.2, 5.0)
        yield jnp.asarray(s), jnp.asarray(y)


def _close(dense, compact, tol):
    ref = jnp.max(jnp.abs(dense))
    return float(jnp.max(jnp.abs(dense - C.compact_dense(compact))) / ref) < tol


def test_compact_updates_equal_the_dense_ones_in_float64():
    rng = np.random.default_rng(0)
    n, count = 12, 20
    with jax.enable_x64(True):
        Hd, Sd, Bd = jnp.zeros((n, n)), jnp.zeros((n, n)), jnp.eye(n)
        Hc = C.compact_init(n, 2 * count, jnp.float64)
        Sc = C.compact_init(n, 2 * count, jnp.float64)
        Bc = C.compact_init(n, count, jnp.float64, c=1.0)
        for s, y in _pairs(rng, n, count):
            Hd, Hc = F.bfgs_inverse_update(Hd, s, y), C.compact_bfgs_update(Hc, s, y)
            Sd, Sc = F.sr1_inverse_update(Sd, s, y), C.compact_sr1_update(Sc, s, y)
            u, r = jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.uniform())
            Bd, Bc = precondition_update(Bd, u, r), C.compact_precondition_update(Bc, u, r)
            assert _close(Hd, Hc, 1e-12) and _close(Sd, Sc, 1e-12) and _close(Bd, Bc, 1e-12)
            v = jnp.asarray(rng.normal(size=n))
            np.testing.assert_allclose(C.compact_apply(Hc, v), Hd @ v, rtol=1e-10, atol=1e-12)
        # BFGS skipped the negative-curvature pairs, B took every update
        assert int(Hc.k) == 2 * (count - count // 5) and int(Bc.k) == count


def test_a_full_compact_matrix_freezes_and_B_stays_at_least_the_identity():
    rng = np.random.default_rng(1)
    n = 8
    with jax.enable_x64(True):
        H = C.compact_init(n, 4, jnp.float64)  # room for two pairs
        B = C.compact_init(n, 2, jnp.float64, c=1.0)
        for t, (s, y) in enumerate(_pairs(rng, n, 8)):
            before = C.compact_dense(H)
            H = C.compact_bfgs_update(H, s, y)
            if t >= 2:  # full: the pair is skipped, the estimate unchanged
                np.testing.assert_array_equal(C.compact_dense(H), before)
            B = C.compact_precondition_update(B, jnp.asarray(rng.normal(size=n)), 0.7)
        assert int(H.k) == 4 and int(B.k) == 2
        eig = np.linalg.eigvalsh(np.asarray(C.compact_dense(B)))
        assert eig.min() >= 1 - 1e-12
        np.testing.assert_allclose(C.compact_dense(B), C.compact_dense(B).T)


def test_compact_init_refuses_no_rows():
    with pytest.raises(ValueError, match="at least one row"):
        C.compact_init(4, 0, jnp.float32)


def _run(net, f, x0, steps):
    state = model_init(net, x0)
    vg = jax.jit(jax.value_and_grad(f))
    step = jax.jit(lambda s, v, g: model_update(net, s, v, g))
    xs = []
    for _ in range(steps):
        v, g = vg(state.x)
        state = step(state, v, g)
        xs.append(state.x)
    return state, np.asarray(xs)


# optimus-humanoid takes small absolute steps (0.01 box units): it descends, slowly
@pytest.mark.parametrize("name, depth", [("optimus", 1e-6), ("optimus-humanoid", 0.1)])
def test_shipped_model_takes_the_same_steps_in_compact_form(name, depth):
    """30 steps on an ill-conditioned quadratic in float64 with the dense and the compact
    state (the update rule, the acceptance layer and the SR1 choice included). The dense
    run itself amplifies a change of x0 by 1e-15 about 1000-fold per step between steps 8
    and 12 (the network and the acceptance decisions), so the trial points are compared
    where rounding has not been amplified yet, and the end points by their values: the
    same depth of convergence, not merely a finite result."""
    n, steps = 16, 30
    with jax.enable_x64(True):
        net = optimus.load_pretrained(name)
        d = jnp.logspace(0, 3, n)
        f = lambda x: 0.5 * jnp.sum(d * x**2)  # noqa: E731
        x0 = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, n))
        _, xs_dense = _run(net, f, x0, steps)
        _, xs_compact = _run(with_rule(net, qn_memory=steps), f, x0, steps)
        np.testing.assert_allclose(xs_compact[:8], xs_dense[:8], rtol=0, atol=1e-12)
        f_dense, f_compact = float(f(xs_dense[-1])), float(f(xs_compact[-1]))
        assert f_dense < depth * float(f(x0))  # it did optimise
        assert abs(np.log10(f_compact) - np.log10(f_dense)) < 1.0, (f_compact, f_dense)


def test_minimize_switches_to_the_compact_form_only_where_it_is_cheaper():
    net = optimus.load_pretrained("optimus")
    budget = 25
    big = COMPACT_MIN_RATIO * budget + 1
    assert fit_memory(net, big, budget, {}).config.qn_memory == budget
    assert fit_memory(net, big - 1, budget, {}).config.qn_memory == 0
    assert fit_memory(net, big, budget, {"qn_memory": 0}) is net  # the caller's choice
    for name in ("optimus-noprecond", "mlp"):  # L-BFGS features, no n x n matrix
        other = optimus.load_pretrained(name)
        assert fit_memory(other, big, budget, {}) is other
    with pytest.raises(ValueError, match="qn_memory"):
        NetConfig(secant="bfgs", bfgs_h0="rescale", qn_memory=4)
    with pytest.raises(ValueError, match="qn_memory"):
        NetConfig(qn_memory=-1)


def test_minimize_in_compact_form_matches_dense_and_returns_an_operator_hess_inv():
    """A problem large enough for the compact form: same result as the forced dense form
    (to float32 rounding along the trajectory), and ``hess_inv`` an operator (as scipy's
    L-BFGS-B returns) equal to the dense B, scaled by the box half-widths with bounds."""
    from scipy.sparse.linalg import LinearOperator

    n, steps = 240, 25  # n > COMPACT_MIN_RATIO * steps
    d = jnp.linspace(1.0, 20.0, n)
    f = lambda x: jnp.sum(d * (x - 0.3) ** 2)  # noqa: E731
    x0 = jnp.zeros(n)
    kw = dict(steps=steps, max_evals=steps, gtol=0.0)
    auto = optimus.minimize(f, x0, **kw)
    dense = optimus.minimize(f, x0, **kw, options={"qn_memory": 0})
    assert auto.fun < 1e-3 * float(f(x0))
    assert abs(np.log10(auto.fun) - np.log10(dense.fun)) < 0.5
    assert isinstance(auto.hess_inv, LinearOperator)
    assert not isinstance(dense.hess_inv, LinearOperator) and dense.hess_inv.shape == (n, n)
    H = auto.hess_inv @ np.eye(n, dtype=np.float32)
    np.testing.assert_allclose(H, H.T, atol=1e-5)
    assert np.linalg.eigvalsh(H).min() > 1 - 1e-3  # B >= I
    boxed = optimus.minimize(f, x0, **kw, bounds=(-2.0, 2.0))
    H_box = boxed.hess_inv @ np.eye(n, dtype=np.float32)
    assert np.linalg.eigvalsh(H_box).min() > 4 * (1 - 1e-3)  # h B h with h = 2


def test_minimize_batch_returns_one_operator_per_problem_in_compact_form():
    from scipy.sparse.linalg import LinearOperator

    n, steps = 48, 5  # n > COMPACT_MIN_RATIO * steps
    x0 = jnp.stack([jnp.zeros(n), jnp.ones(n)])
    res = optimus.minimize_batch(
        lambda x, a: jnp.sum((x - a) ** 2), x0, args=(jnp.asarray([0.5, -0.5]),), steps=steps
    )
    assert isinstance(res.hess_inv, list) and len(res.hess_inv) == 2
    for b in range(2):
        op = res.result(b).hess_inv
        assert isinstance(op, LinearOperator) and op.shape == (n, n)
        assert np.all(np.isfinite(op @ np.ones(n, np.float32)))


def test_compact_corner_cases_behave_like_the_dense_forms():
    n = 4
    # a non-finite u makes B non-finite, as in the dense form (the safeguard then resets it)
    B = C.compact_init(n, 3, jnp.float32, c=1.0)
    B = C.compact_precondition_update(B, jnp.asarray([1.0, jnp.inf, 0.0, 2.0]), 0.5)
    assert not np.all(np.isfinite(C.compact_apply(B, jnp.ones(n))))
    assert np.all(np.isfinite(B.P))  # the row itself is written finite
    # an estimate whose scale underflowed to 0 still has its pairs: not "fresh"
    H = C.compact_init(n, 4, jnp.float32)
    assert not bool(C.compact_started(H))
    assert bool(C.compact_started(eqx_replace_k(H, 2)))
    # qn_memory set in the network's config is the caller's choice too
    net = with_rule(optimus.load_pretrained("optimus"), qn_memory=3)
    assert fit_memory(net, 10**6, 100, {}).config.qn_memory == 3


def eqx_replace_k(H, k):
    return C.Compact(c=H.c, P=H.P, M=H.M, k=jnp.asarray(k, jnp.int32))


def test_optax_interface_takes_qn_memory_for_large_models(caplog):
    """Above optimus.optax.LARGE_N parameters the dense model warns and names the option;
    with qn_memory it runs in compact form without the warning, and descends."""
    n = optimus.optax.LARGE_N + 1
    x = jnp.zeros(n)
    with caplog.at_level("WARNING", logger="optimus"):
        optimus.optax.optimus().init(x)
    assert "qn_memory" in caplog.text
    caplog.clear()
    tx = optimus.optax.optimus(qn_memory=8)
    f = lambda p: jnp.sum((p - 0.5) ** 2)  # noqa: E731
    with caplog.at_level("WARNING", logger="optimus"):
        state = tx.init(x)
    assert caplog.text == ""
    p = x
    for _ in range(8):
        value, grad = jax.value_and_grad(f)(p)
        updates, state = tx.update(grad, state, p, value=value)
        p = p + updates
    assert f(p) < 1e-3 * f(x)


def test_safeguard_resets_compact_matrices_like_dense_ones():
    """A network whose outputs are all NaN falls back to a gradient step at every step; the
    compact B is reset to the identity and the secant estimates to 'no pair yet', as the
    dense ones are, and the iterates stay finite and descend."""
    import importlib

    from optimus.nets import build_net

    L = importlib.import_module("optimus.optimizers.learned")
    net = build_net(optimus.load_pretrained("optimus").config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(net)
    net = with_rule(jax.tree.unflatten(tree, [leaf * jnp.nan for leaf in leaves]), qn_memory=12)
    d = jnp.asarray([1.0, 3.0, 10.0, 2.0, 5.0])
    f = lambda x: jnp.sum(d * x**2)  # noqa: E731
    state = L.learned_init(net, jnp.full((5,), -1.0))
    assert isinstance(state.B, C.Compact) and isinstance(state.sr1.H, C.Compact)
    for _ in range(12):
        v, g = jax.value_and_grad(f)(state.x)
        state = L.learned_update(net, state, v, g)
        assert np.all(np.isfinite(state.x))
    assert int(state.n_fallback) == 12 - (net.config.probe > 0)
    np.testing.assert_array_equal(C.compact_dense(state.B), np.eye(5))
    assert int(state.B.k) == 0 and int(state.H.k) == 0 and float(state.H.c) == 0
    assert float(f(state.x)) < 1e-2 * float(f(jnp.full((5,), -1.0)))
