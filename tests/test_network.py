"""Properties of the learned-optimizer networks: equivariance, padding, B SPD, invariances."""

import dataclasses
import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus.nets import NetConfig, build_net, with_config
from optimus.nets import features as F
from optimus.nets.optimus import precondition_update
from optimus.optimizers.learned import learned_init, learned_update

CONFIGS = {
    "optimus": NetConfig(kind="optimus", width=16, depth=2, num_heads=2),
    "optimus-noprecond": NetConfig(
        kind="optimus", width=16, depth=2, num_heads=2, precondition=False
    ),
    "mlp": NetConfig(kind="mlp", hidden=16),
    # the shipped architecture: inducing-point attention and a dense BFGS direction
    "optimus-induced-bfgs": NetConfig(
        width=16, depth=2, num_heads=2, attention="induced", num_inducing=4, secant="bfgs"
    ),
    "optimus-induced-noprecond": NetConfig(
        width=16, depth=2, num_heads=2, attention="induced", num_inducing=4, precondition=False
    ),
    # the Adam-like term in box units (the step rule of optimus-humanoid), no step acceptance
    "optimus-box": NetConfig(width=16, depth=2, num_heads=2, secant="bfgs", step_scale="box"),
    # the SR1 direction where it predicts better than BFGS (the shipped optimus' rule)
    "optimus-sr1": NetConfig(
        width=16,
        depth=2,
        num_heads=2,
        attention="induced",
        num_inducing=4,
        secant="bfgs",
        sr1=True,
    ),
}


def _net(name, seed=0):
    return build_net(CONFIGS[name], jax.random.key(seed))


def _quad(x):
    scales = jnp.linspace(1.0, 10.0, x.shape[0])
    return jnp.sum(scales * (x - 0.3) ** 2) + jnp.sum(jnp.sin(3 * x))


def _run(net, x0, steps, mask=None, fun=_quad):
    """A few learned updates on ``fun`` (restricted to valid coordinates when masked)."""
    state = learned_init(net, x0, mask)
    m = jnp.ones_like(x0, bool) if mask is None else mask

    def obj(x):
        return fun(jnp.where(m, x, 0.0)[: int(m.sum())]) if mask is not None else fun(x)

    for _ in range(steps):
        f, g = jax.value_and_grad(obj)(state.x)
        state = learned_update(net, state, f, g)
    return state


@pytest.mark.parametrize("name", list(CONFIGS))
def test_permutation_equivariance(name):
    net = _net(name)
    n = 9
    key = jax.random.key(1)
    x0 = jax.random.normal(key, (n,))
    perm = jax.random.permutation(jax.random.key(2), n)
    w = jnp.linspace(1.0, 10.0, n)

    def f(x, w=w):
        return jnp.sum(w * (x - 0.3) ** 2) + jnp.sum(jnp.sin(3 * x))

    def f_perm(xp):
        return jnp.sum(w[perm] * (xp - 0.3) ** 2) + jnp.sum(jnp.sin(3 * xp))

    s1 = _run(net, x0, 4, fun=f)
    s2 = _run(net, x0[perm], 4, fun=f_perm)
    np.testing.assert_allclose(s1.x[perm], s2.x, rtol=2e-4, atol=1e-5)
    # the raw network outputs are permuted the same way
    g = jax.grad(f)(s1.x)
    feats = F.coordinate_features(g, s1.acc, g, g, g, g, g, jnp.ones(n, bool))
    glob = jnp.zeros(F.N_GLOBAL_FEATURES)
    out1 = net(feats, glob, jnp.ones(n, bool))
    out2 = net(feats[perm], glob, jnp.ones(n, bool))
    for a, b in [(out1.d, out2.d), (out1.mu, out2.mu), (out1.u, out2.u)]:
        np.testing.assert_allclose(a[perm], b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out1.sigma, out2.sigma, rtol=1e-5)
    if s1.B is not None:
        np.testing.assert_allclose(s1.B[perm][:, perm], s2.B, rtol=2e-4, atol=1e-5)
    if s1.H is not None:
        np.testing.assert_allclose(s1.H[perm][:, perm], s2.H, rtol=2e-4, atol=1e-6)
    if s1.sr1 is not None:
        np.testing.assert_allclose(s1.sr1.H[perm][:, perm], s2.sr1.H, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padded_and_unpadded_agree(name):
    net = _net(name)
    n, pad = 7, 16
    x0 = jax.random.normal(jax.random.key(3), (n,))
    s1 = _run(net, x0, 5)
    x0p = jnp.concatenate([x0, 5.0 * jnp.ones(pad - n)])
    mask = jnp.arange(pad) < n
    s2 = _run(net, x0p, 5, mask=mask)
    np.testing.assert_allclose(s1.x, s2.x[:n], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(s2.x[n:], x0p[n:])  # padding never moves


@pytest.mark.parametrize("name", ["optimus", "optimus-induced-bfgs"])
@pytest.mark.parametrize("n", [1, 2, 33, 2000])
def test_any_dimension(n, name):
    net = _net(name)
    x0 = jax.random.normal(jax.random.key(4), (n,))
    state = _run(net, x0, 2, fun=lambda x: jnp.sum(x**2))
    assert state.x.shape == (n,)
    assert bool(jnp.all(jnp.isfinite(state.x)))
    assert float(jnp.sum(state.x**2)) < float(jnp.sum(x0**2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_B_stays_symmetric_positive_definite(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        n = 12
        key = jax.random.key(5)
        B = jnp.eye(n, dtype=dtype)
        for i in range(3000):
            k1, k2, key = jax.random.split(key, 3)
            u = (
                jax.random.normal(k1, (n,))
                * 10.0 ** jax.random.uniform(k2, (), minval=-3, maxval=1)
            ).astype(dtype)
            rho = jnp.asarray([0.0, 0.5, 0.9, 0.999, 1.0][i % 5], dtype)
            B = precondition_update(B, u, rho)
        assert B.dtype == dtype
        np.testing.assert_array_equal(B, B.T)
        eig = np.linalg.eigvalsh(np.asarray(B, np.float64))
        assert eig.min() > 0.99  # B >= I by construction


def test_B_spd_along_a_trajectory():
    net = _net("optimus")
    state = _run(net, jax.random.normal(jax.random.key(6), (10,)), 30)
    B = np.asarray(state.B, np.float64)
    np.testing.assert_allclose(B, B.T, atol=1e-6)
    assert np.linalg.eigvalsh(B).min() > 0.99


@pytest.mark.parametrize("name", list(CONFIGS))
def test_objective_scale_invariance(name):
    """f -> c f leaves the trajectory unchanged (features are scale free)."""
    with jax.enable_x64(True):
        net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, _net(name))
        x0 = jax.random.normal(jax.random.key(7), (6,), jnp.float64)
        s1 = _run(net, x0, 6, fun=_quad)
        s2 = _run(net, x0, 6, fun=lambda x: 1e4 * _quad(x))
        s3 = _run(net, x0, 6, fun=lambda x: 1e-4 * _quad(x))
        assert s1.x.dtype == jnp.float64
        np.testing.assert_allclose(s1.x, s2.x, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s1.x, s3.x, rtol=1e-9, atol=1e-12)


def test_features_are_rms_normalised_and_finite():
    n = 11
    g = jax.random.normal(jax.random.key(8), (n,)) * 1e-15  # tiny gradients: v ~ 1e-30
    g = g.at[3].set(0.0)
    acc = F.update_accumulators(F.init_accumulators(g), g)
    mask = jnp.arange(n) < 9
    feats = F.coordinate_features(g, acc, g, g, g, g, g, mask)
    assert feats.shape == (n, F.N_COORD_FEATURES)
    assert bool(jnp.all(jnp.isfinite(feats)))
    rms = jnp.sqrt(jnp.mean(feats[:9] ** 2, axis=0))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-3)  # every channel, v and 1/sqrt(v) too
    np.testing.assert_array_equal(feats[9:], 0.0)


def test_untrained_network_is_a_sensible_descent_method():
    """Initialised as an L-BFGS-like method (gate lam = 1, tiny Adam-like term): an untrained
    net already solves a quadratic."""
    net = _net("optimus")
    x0 = jnp.full((5,), 0.8)
    state = _run(net, x0, 20, fun=lambda x: jnp.sum(jnp.arange(1.0, 6.0) * x**2))
    assert float(jnp.sum(state.x**2)) < 1e-6 * float(jnp.sum(x0**2))


def test_box_step_scale_measures_the_adam_like_term_in_box_units():
    """``step_scale="box"``: a = exp(c1 mu + sigma) in box units instead of a multiple of the
    Barzilai-Borwein length ell. With the quasi-Newton gate closed and B = I the two rules
    give the same network step up to exactly the factor ell, at every step."""
    import dataclasses

    with jax.enable_x64(True):  # the steps are ~1e-5 of x: compare them without rounding
        base = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, _net("optimus-noprecond")
        )
        closed = base.glob_head.bias.at[3].set(-100.0)  # lam = 2 sigmoid(-100) = 0
        bb = eqx.tree_at(lambda m: m.glob_head.bias, base, closed)
        box = with_config(bb, dataclasses.replace(bb.config, step_scale="box"))
        state = learned_init(bb, jnp.linspace(-0.5, 0.7, 6, dtype=jnp.float64))
        for t in range(4):
            f, g = jax.value_and_grad(_quad)(state.x)
            s, y = state.x - state.x_prev, g - state.g_prev
            ell = 1.0 if t == 0 else F.reference_length(g, s, y, state.mask)  # 1 before a pair
            new_bb = learned_update(bb, state, f, g)
            new_box = learned_update(box, state, f, g)  # same state: the rules differ only here
            np.testing.assert_allclose(
                np.asarray(state.x - new_box.x), np.asarray(state.x - new_bb.x) / ell, rtol=1e-9
            )
            assert t == 0 or abs(float(ell) - 1) > 1e-3  # the test compares different lengths
            state = new_bb


def test_probe_sets_the_first_step_only():
    """``probe = p``: the first step is -g scaled to RMS length p over the valid coordinates
    (padding untouched); every later step is the network's, given the same state."""
    import dataclasses

    net = _net("optimus")
    probed = with_config(net, dataclasses.replace(net.config, probe=0.1))
    mask = jnp.array([True] * 5 + [False])
    x0 = jnp.array([0.3, -0.2, 0.5, 0.1, -0.4, 0.0])
    f, g = jax.value_and_grad(_quad)(x0)
    g = jnp.where(mask, g, 0)
    first = learned_update(probed, learned_init(probed, x0, mask), f, g)
    step = np.asarray(x0 - first.x)
    rms = float(np.sqrt(np.sum(np.asarray(g) ** 2) / 5))
    np.testing.assert_allclose(step, np.asarray(g) * (0.1 / rms), rtol=1e-5, atol=1e-7)
    assert step[5] == 0
    assert np.sqrt(np.mean(step[:5] ** 2)) == pytest.approx(0.1, rel=1e-5)
    own = learned_update(net, learned_init(net, x0, mask), f, g)
    assert np.sqrt(np.mean(np.asarray(x0 - own.x)[:5] ** 2)) < 1e-3  # the network's probe
    f1, g1 = jax.value_and_grad(_quad)(first.x)
    g1 = jnp.where(mask, g1, 0)
    np.testing.assert_array_equal(  # the second step is the network's
        np.asarray(learned_update(probed, first, f1, g1).x),
        np.asarray(learned_update(net, first, f1, g1).x),
    )


def _bfgs_reference(H, s, y, scaling="asymmetric"):
    """BFGS with the scalings of F.bfgs_inverse_update, textbook product form, float64
    NumPy."""
    H, s, y = (np.asarray(a, np.float64) for a in (H, s, y))
    n = s.size
    sy = s @ y
    if not np.any(H):
        H = (sy / (y @ y)) * np.eye(n)
    else:
        r = sy / (y @ H @ y)
        tau = {
            "asymmetric": r if r < F.SHRINK_BELOW else max(1.0, r),
            "up": max(1.0, r),
            "ol": r,
            "none": 1.0,
        }[scaling]
        H = tau * H
    rho = 1.0 / sy
    V = np.eye(n) - rho * np.outer(y, s)
    return V.T @ H @ V + rho * np.outer(s, s)


@pytest.mark.parametrize("scaling", F.BFGS_SCALINGS)
def test_bfgs_inverse_update_matches_the_product_form_and_the_secant_equation(scaling):
    with jax.enable_x64(True):
        n = 7
        key = jax.random.key(11)
        A = jax.random.normal(key, (n, n), jnp.float64)
        A = A @ A.T + 0.1 * jnp.eye(n, dtype=jnp.float64)  # SPD Hessian: s^T y > 0 always
        H = jnp.zeros((n, n), jnp.float64)
        H_ref = np.zeros((n, n))
        for i in range(12):
            s = jax.random.normal(jax.random.fold_in(key, i), (n,), jnp.float64)
            y = A @ s
            H = F.bfgs_inverse_update(H, s, y, scaling)
            H_ref = _bfgs_reference(H_ref, s, y, scaling)
            np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(H @ y, s, rtol=1e-9, atol=1e-12)  # secant equation
            np.testing.assert_array_equal(H, H.T)  # exactly symmetric
            assert np.linalg.eigvalsh(np.asarray(H)).min() > 0


def test_bfgs_inverse_update_skips_pairs_without_positive_curvature():
    n = 4
    H = jnp.zeros((n, n))
    s = jnp.arange(1.0, 5.0)
    np.testing.assert_array_equal(F.bfgs_inverse_update(H, s, -s), H)  # s^T y < 0
    np.testing.assert_array_equal(F.bfgs_inverse_update(H, s, 0 * s), H)  # y = 0
    H1 = F.bfgs_inverse_update(H, s, 2 * s)
    np.testing.assert_allclose(H1 @ (2 * s), s, rtol=1e-6)
    np.testing.assert_array_equal(F.bfgs_inverse_update(H1, s, -s), H1)


def test_dense_bfgs_network_solves_an_ill_conditioned_quadratic_like_bfgs():
    """Untrained, secant="bfgs" is scaled BFGS with unit steps: on a rotated 10-dimensional
    quadratic with condition number 1e3 it converges in a few times n steps, where the
    5-pair L-BFGS direction of secant="lbfgs" is far slower."""
    n = 10
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(12), (n, n)))
    A = Q @ jnp.diag(jnp.logspace(0, 3, n)) @ Q.T

    def f(x):
        return 0.5 * x @ A @ x

    x0 = jnp.ones(n)
    finals = {}
    for name in ("optimus-induced-bfgs", "optimus-induced-noprecond"):
        state = _run(_net(name), x0, 40, fun=f)
        finals[name] = float(f(state.x)) / float(f(x0))
    assert finals["optimus-induced-bfgs"] < 1e-8
    assert finals["optimus-induced-bfgs"] < 1e-3 * finals["optimus-induced-noprecond"]


def test_rescaled_bfgs_is_bfgs_from_the_latest_gamma_times_identity():
    """H = A + gamma C equals the textbook product form started from H0 = gamma_k I with the
    latest pair's gamma_k, satisfies the secant equation and stays symmetric positive
    definite; a pair without positive curvature is skipped."""
    with jax.enable_x64(True):
        n = 6
        key = jax.random.key(21)
        M = jax.random.normal(key, (n, n), jnp.float64)
        M = M @ M.T + 0.1 * jnp.eye(n, dtype=jnp.float64)
        h = F.bfgs_rescaled_init(n, jnp.float64)
        np.testing.assert_array_equal(F.bfgs_rescaled_direction(h, jnp.ones(n)), 0)
        pairs = []
        for i in range(9):
            s = jax.random.normal(jax.random.fold_in(key, i), (n,), jnp.float64)
            y = M @ s
            h = F.bfgs_rescaled_update(h, s, y)
            pairs.append((np.asarray(s), np.asarray(y)))
            gamma = float(s @ y / (y @ y))
            H_ref = gamma * np.eye(n)
            for sj, yj in pairs:
                rho = 1.0 / (sj @ yj)
                V = np.eye(n) - rho * np.outer(yj, sj)
                H_ref = V.T @ H_ref @ V + rho * np.outer(sj, sj)
            H = np.asarray(h.A + h.gamma * h.C)
            np.testing.assert_allclose(H, H_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(H @ np.asarray(y), np.asarray(s), rtol=1e-8, atol=1e-10)
            np.testing.assert_array_equal(h.A, h.A.T)
            np.testing.assert_array_equal(h.C, h.C.T)
            assert np.linalg.eigvalsh(H).min() > 0
            g = jax.random.normal(jax.random.fold_in(key, 100 + i), (n,), jnp.float64)
            np.testing.assert_allclose(F.bfgs_rescaled_direction(h, g), H @ g, rtol=1e-10)
        same = F.bfgs_rescaled_update(h, s, -s)  # s^T y < 0: skipped
        for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(h), strict=True):
            np.testing.assert_array_equal(a, b)


def test_rescaled_bfgs_network_runs_and_solves_a_quadratic():
    """secant="bfgs" with bfgs_h0="rescale" keeps the two-part state through the learned
    step (and the acceptance layer) and, untrained, solves an ill-conditioned quadratic."""
    n = 10
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(12), (n, n)))
    A = Q @ jnp.diag(jnp.logspace(0, 3, n)) @ Q.T

    def f(x):
        return 0.5 * x @ A @ x

    cfg = NetConfig(monotone=True, attention="induced", secant="bfgs", bfgs_h0="rescale")
    net = build_net(cfg, jax.random.key(0))
    x0 = jnp.ones(n)
    res = optimus.minimize(f, x0, method="optimus", params=net, steps=60, gtol=0.0)
    assert res.success or res.status.name == "MAX_STEPS"
    assert float(res.fun) < 1e-8 * float(f(x0))


def test_sr1_update_satisfies_every_secant_pair_on_a_quadratic():
    """SR1's hereditary property: on a quadratic, H y_j = s_j for every pair so far, so after
    n independent steps H is the exact inverse Hessian, whatever the step lengths (what
    BFGS needs exact line searches for). H stays exactly symmetric; it may be indefinite."""
    with jax.enable_x64(True):
        n = 6
        key = jax.random.key(31)
        Q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float64))
        A = Q @ jnp.diag(jnp.array([-2.0, 0.5, 1.0, 3.0, 10.0, 100.0])) @ Q.T  # indefinite
        H = jnp.zeros((n, n), jnp.float64)
        pairs = []
        for i in range(n):
            s = jax.random.normal(jax.random.fold_in(key, i), (n,), jnp.float64)
            y = A @ s
            if i == 0:  # the first pair must have positive curvature to start gamma I
                s, y = Q[:, 3], A @ Q[:, 3]
            H = F.sr1_inverse_update(H, s, y)
            pairs.append((s, y))
            for sj, yj in pairs:
                np.testing.assert_allclose(H @ yj, sj, rtol=1e-8, atol=1e-10)
            np.testing.assert_array_equal(H, H.T)
        np.testing.assert_allclose(H, jnp.linalg.inv(A), rtol=1e-7, atol=1e-9)


def test_sr1_update_skips_degenerate_pairs():
    n = 4
    H0 = jnp.zeros((n, n))
    s = jnp.arange(1.0, 5.0)
    np.testing.assert_array_equal(F.sr1_inverse_update(H0, s, -s), H0)  # no start: s^T y < 0
    H1 = F.sr1_inverse_update(H0, s, 2 * s)  # gamma = 1/2, and the pair already holds
    np.testing.assert_allclose(H1, 0.5 * jnp.eye(n), rtol=1e-6)
    np.testing.assert_array_equal(F.sr1_inverse_update(H1, s, 2 * s), H1)  # v = s - H y = 0


def _sr1_reference(H, s, y):
    """Nocedal & Wright's SR1 update as first written here: H0 = gamma I materialised."""
    sy, yy = jnp.vdot(s, y), jnp.vdot(y, y)
    fresh = jnp.trace(H) == 0
    start = fresh & (sy > 0) & (yy > 0)
    gamma = jnp.where(start, sy, 0.0) / jnp.where(start, yy, 1.0)
    H0 = jnp.where(fresh, gamma * jnp.eye(H.shape[0], dtype=H.dtype), H)
    v = s - H0 @ y
    vy = jnp.vdot(v, y)
    r = np.sqrt(float(jnp.finfo(H.dtype).eps))
    keep = (~fresh | start) & (jnp.abs(vy) > r * jnp.sqrt(jnp.vdot(v, v) * yy))
    return jnp.where(keep, H0 + jnp.outer(v, v) / jnp.where(keep, vy, 1.0), H0)


def test_sr1_update_equals_the_materialised_formula_bit_for_bit():
    """The update forms H0 y as gamma y (H0 = gamma I is never materialised, which saves two
    memory passes over n^2 entries) and F.trace sums the gathered diagonal; along a sequence
    of pairs from scratch the estimates equal the materialised formula's to the last bit."""
    key = jax.random.key(5)
    n = 37
    Q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    A = Q @ jnp.diag(jnp.linspace(-1.0, 30.0, n)) @ Q.T
    H = ref = jnp.zeros((n, n))
    for i in range(8):
        s = jax.random.normal(jax.random.fold_in(key, i), (n,))
        y = A @ s if i else s  # the first pair has positive curvature: it starts gamma I
        H, ref = F.sr1_inverse_update(H, s, y), _sr1_reference(ref, s, y)
        np.testing.assert_array_equal(H, ref)
    assert F.trace(H) != 0
    assert F.trace(H) == pytest.approx(float(jnp.trace(H)), rel=1e-5)
    assert F.trace(jnp.zeros((n, n))) == 0


def _rotated_quadratic(n, kappa, seed):
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n)))
    A = Q @ jnp.diag(jnp.logspace(0, np.log10(kappa), n)) @ Q.T
    return lambda x: 0.5 * x @ A @ x


def test_sr1_direction_speeds_up_the_shipped_optimus_on_an_ill_conditioned_quadratic():
    """Without a line search the BFGS estimate learns the low-curvature directions of an
    ill-conditioned quadratic slowly; with ``sr1`` the shipped weights switch to the SR1
    direction once it predicts the secant pairs better and reach a far lower value in the
    same number of evaluations (bench_results/sr1/)."""
    f = _rotated_quadratic(30, 1e4, 5)
    x0 = jnp.ones(30)
    net = optimus.load_pretrained("optimus")
    finals = {}
    for sr1 in (False, True):
        p = with_config(net, dataclasses.replace(net.config, sr1=sr1))
        res = optimus.minimize(f, x0, method="optimus", params=p, steps=100, gtol=0.0)
        finals[sr1] = float(res.fun) / float(f(x0))
    assert finals[True] < 1e-10
    assert finals[True] < 1e-4 * finals[False]


def test_sr1_direction_is_taken_only_while_sr1_predicts_better_and_descends():
    """The switch of NetConfig.sr1: the SR1 direction replaces the BFGS one only after SR1
    has predicted the secant pairs better by the margin, and only if it descends."""
    L = importlib.import_module("optimus.optimizers.learned")

    n = 5
    A = jnp.diag(jnp.array([1.0, 2.0, 5.0, 10.0, 100.0]))
    exact, rough = jnp.linalg.inv(A), 0.05 * jnp.eye(n)
    g = jnp.ones(n)
    q_bfgs = rough @ g
    key = jax.random.key(4)

    def run(H_sr1, H_bfgs, steps):
        st = L.SR1State(H_sr1, jnp.zeros(()))
        q = None
        for i in range(steps):
            s = jax.random.normal(jax.random.fold_in(key, i), (n,))
            st, q = L._sr1_direction(st, H_bfgs, g, s, A @ s, q_bfgs, jnp.asarray(i + 1), 2.0)
        return st, q

    st, q = run(exact, rough, 1)  # an exact SR1 estimate: one pair is enough
    assert float(st.score) == -L.SR1_CLIP < -2.0
    np.testing.assert_allclose(q, exact @ g, rtol=1e-5)  # the pair keeps it exact
    st, q = run(rough, rough, 1)  # the same prediction: the score stays 0, BFGS is kept
    assert float(st.score) == 0.0
    np.testing.assert_array_equal(q, q_bfgs)
    st, q = run(rough, exact, 3)  # BFGS predicts better: its direction stays
    assert float(st.score) > 0
    np.testing.assert_array_equal(q, q_bfgs)
    # SR1 predicts better but its direction climbs: not taken
    flipped = L.SR1State(-exact, jnp.asarray(-10.0))
    s = jnp.zeros(n)  # no pair: nothing scored or updated
    _, q = L._sr1_direction(flipped, rough, g, s, s, q_bfgs, jnp.asarray(3), 2.0)
    np.testing.assert_array_equal(q, q_bfgs)


def test_unknown_bfgs_scaling_is_refused():
    with pytest.raises(ValueError, match="unknown BFGS scaling"):
        F.bfgs_inverse_update(jnp.zeros((2, 2)), jnp.ones(2), jnp.ones(2), "sr1")


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(attention="linear"), "unknown attention"),
        (dict(secant="sr1"), "unknown secant"),
        (dict(bfgs_h0="sr1"), "unknown bfgs_h0"),
        (dict(backtrack="cubic"), "unknown backtrack"),
        (dict(num_inducing=0), "num_inducing"),
        (dict(step_scale="adam"), "unknown step_scale"),
        (dict(probe=-0.1), "probe"),
        (dict(probe=float("nan")), "probe"),
        (dict(probe=float("inf")), "probe"),
        (dict(secant="lbfgs", sr1=True), "needs secant"),
        (dict(secant="bfgs", sr1=True, sr1_margin=-1.0), "sr1_margin"),
        (dict(secant="bfgs", sr1=True, sr1_margin=float("nan")), "sr1_margin"),
    ],
)
def test_bad_network_config_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        NetConfig(**bad)
