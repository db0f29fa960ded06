"""The Gaussian-smoothing layer (optimus.optimizers.smoothing) around the shipped Optimus."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus.meta.train import load_config
from optimus.nets import with_rule
from optimus.optimizers import smoothing as S
from optimus.optimizers.learned import model_init, model_update

N = 16


def _rastrigin(z):
    x = 5.12 * z
    return jnp.sum(x**2 + 10 * (1 - jnp.cos(2 * jnp.pi * x)))


def _shipped(**rule):
    """The shipped Optimus with the update-rule fields ``rule`` changed."""
    return with_rule(optimus.load_pretrained("optimus"), **rule)


def _drive(net, f, x0, evals):
    """Trial points, values, gradients and states of ``evals`` evaluations."""
    vg = jax.jit(jax.value_and_grad(f))
    step = jax.jit(lambda s, v, g: model_update(net, s, v, g))
    state = model_init(net, x0)
    xs, fs, gs, states = [], [], [], []
    for _ in range(evals):
        x = state.x
        v, g = vg(x)
        xs.append(np.asarray(x, np.float64))
        fs.append(float(v))
        gs.append(np.asarray(g, np.float64))
        state = step(state, v, g)
        states.append(state)
    return xs, fs, gs, states


def _rms(v):
    return float(np.sqrt(np.mean(np.square(v))))


def test_the_phase_samples_antithetic_pairs_moves_the_centre_and_hands_off_at_the_best_point():
    rounds, k = 2, 4
    net = _shipped(smooth_rounds=rounds, smooth_samples=k)
    x0 = jax.random.uniform(jax.random.key(3), (N,), minval=-0.8, maxval=0.8)
    total = 2 + rounds * k + 1 + 3
    xs, fs, gs, states = _drive(net, _rastrigin, x0, total)
    # detection: the two gradients disagree, so the phase starts after evaluation 2
    cos = gs[0] @ gs[1] / (np.linalg.norm(gs[0]) * np.linalg.norm(gs[1]))
    assert cos < 0.5 and int(states[1].phase) == S.SMOOTH
    centre, prev_centre, prev_g, alpha = xs[0], None, None, None
    for r in range(rounds):
        pts = np.asarray(xs[2 + r * k : 2 + (r + 1) * k])
        for a, b in zip(pts[0::2], pts[1::2], strict=True):  # antithetic about the centre
            np.testing.assert_allclose((a + b) / 2, centre, atol=1e-6)
        # RMS radius smooth_rho * smooth_decay^r (0.2, 0.1) times rms(xi) ~ 1
        assert 0.5 < _rms(pts - centre) / (0.2 * 0.5**r) < 2
        g_mean = np.mean(gs[2 + r * k : 2 + (r + 1) * k], axis=0)
        if r == 0:  # a first step of RMS length smooth_step = 0.3 along the mean gradient
            alpha = 0.3 / _rms(g_mean)
        else:  # then Barzilai-Borwein steps on the smoothed objective
            dc, dg = centre - prev_centre, g_mean - prev_g
            if dc @ dg > 0:
                alpha = dc @ dc / (dc @ dg)
        prev_centre, prev_g = centre, g_mean
        centre = centre - alpha * g_mean
    np.testing.assert_allclose(_rms(xs[2 + k] + xs[3 + k] - 2 * xs[0]) / 2, 0.3, rtol=1e-4)
    # the final centre is evaluated, then the optimizer starts afresh at the best point
    np.testing.assert_allclose(xs[2 + rounds * k], centre, atol=1e-5)
    best = int(np.argmin(fs[: 3 + rounds * k]))
    np.testing.assert_array_equal(xs[3 + rounds * k], xs[best])
    handoff = states[2 + rounds * k]
    assert int(handoff.phase) == S.OFF and int(handoff.inner.t) == 0
    # every evaluation counts as one iteration
    assert [int(s.nit) for s in states[: 3 + rounds * k]] == list(range(1, 4 + rounds * k))


def test_the_layer_is_inert_where_the_first_gradients_agree_or_n_is_small():
    """A smooth function (and Rastrigin below smooth_min_dim) runs exactly as without it."""
    quad = lambda z: jnp.sum(jnp.arange(1, N + 1) * (z - 0.3) ** 2)  # noqa: E731
    x0 = jnp.linspace(-0.9, 0.9, N)
    for f, x in ((quad, x0), (_rastrigin, x0[:4])):
        plain = optimus.minimize(f, x, steps=60, gtol=0.0)
        smooth = optimus.minimize(f, x, steps=60, gtol=0.0, options={"smooth_rounds": 4})
        np.testing.assert_array_equal(np.asarray(plain.x), np.asarray(smooth.x))
        assert plain.fun == smooth.fun and plain.nfev == smooth.nfev


def test_on_rastrigin_it_keeps_the_budget_and_returns_the_best_point():
    x0 = jax.random.uniform(jax.random.key(5), (N,), minval=-0.9, maxval=0.9)
    res = optimus.minimize(
        _rastrigin, x0, steps=100, max_evals=100, gtol=0.0, options={"smooth_rounds": 4}
    )
    assert res.nfev == 100 and np.isfinite(res.fun)
    assert res.fun == pytest.approx(float(_rastrigin(res.x)), rel=1e-6)
    assert res.fun < float(_rastrigin(x0))


def test_perturbations_are_zero_on_padding_and_independent_of_the_padded_size():
    a = S._perturbation(jnp.arange(8) < 5, jnp.int32(1), jnp.int32(2), jnp.float32)
    b = S._perturbation(jnp.arange(12) < 5, jnp.int32(1), jnp.int32(2), jnp.float32)
    assert np.all(np.asarray(a[5:]) == 0) and np.all(np.asarray(b[5:]) == 0)
    np.testing.assert_array_equal(np.asarray(a[:5]), np.asarray(b[:5]))
    assert np.all(np.asarray(a[:5]) != 0)


def test_bad_settings_are_refused_and_meta_training_refuses_the_layer(tmp_path):
    net = optimus.load_pretrained("optimus")
    for bad in (
        {"smooth_rounds": -1},
        {"smooth_samples": 3},
        {"smooth_rho": 0.0},
        {"smooth_decay": 1.5},
        {"smooth_cos": 2.0},
        {"smooth_trap": -0.1},
        {"smooth_max_step": 0.0},
        {"smooth_min_dim": 0},
        {"smooth_step": float("nan")},
    ):
        with pytest.raises(ValueError, match="smooth_"):
            with_rule(net, **bad)
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\n[model]\nsmooth_rounds = 2\n')
    with pytest.raises(ValueError, match="smooth_rounds must be 0 in meta-training"):
        load_config(cfg)


def test_a_probe_that_crosses_a_smooth_minimum_does_not_start_the_phase():
    """Near the minimum of a quadratic the 0.1 probe overshoots and the gradient reverses
    (cosine -1), but the trapezoid rule holds exactly, so the phase stays off; without the
    trapezoid test (smooth_trap = 0) the same start would trigger it."""
    centre = jnp.linspace(-0.5, 0.5, N)
    quad = lambda z: jnp.sum((z - centre) ** 2)  # noqa: E731
    x0 = centre + 0.01 * jnp.cos(jnp.arange(N))
    for trap, phase in ((None, S.OFF), (0.0, S.SMOOTH)):
        net = _shipped(smooth_rounds=2, smooth_samples=4)
        if trap is not None:
            net = with_rule(net, smooth_trap=trap)
        _, _, gs, states = _drive(net, quad, x0, 2)
        cos = gs[0] @ gs[1] / (np.linalg.norm(gs[0]) * np.linalg.norm(gs[1]))
        assert cos < -0.9
        assert int(states[1].phase) == phase


def _centres(states):
    out = [np.asarray(states[0].centre)]
    for s in states:
        c = np.asarray(s.centre)
        if not np.array_equal(c, out[-1]):
            out.append(c)
    return out


def test_a_centre_step_is_capped_at_smooth_max_step():
    """On a tilted plane under fine ripples the smoothed gradient hardly changes between
    rounds, so Barzilai-Borwein steps explode; the cap holds them at RMS smooth_max_step."""
    tilt = jnp.linspace(1.0, 1.2, N)

    def f(z):
        return jnp.sum(tilt * z + 0.1 * jnp.cos(60 * z + jnp.arange(N)))

    rounds, k = 4, 8
    net = _shipped(smooth_rounds=rounds, smooth_samples=k, smooth_max_step=1.0)
    x0 = jnp.zeros(N)
    _, _, _, states = _drive(net, f, x0, 2 + rounds * k + 1)
    assert int(states[1].phase) == S.SMOOTH
    centres = _centres(states)
    moves = [_rms(b - a) for a, b in zip(centres, centres[1:], strict=False)]
    assert len(moves) == rounds
    assert moves[0] == pytest.approx(0.3, rel=1e-4)
    assert max(moves) <= 1.0 * (1 + 1e-5)
    assert any(m == pytest.approx(1.0, rel=1e-4) for m in moves[1:])  # the cap acted


def test_non_finite_samples_are_skipped_not_retried_and_the_solve_goes_on():
    """NaN on part of the region the samples explore: the driver passes those points to the
    layer (no half-way retry that would break an antithetic pair), counts them as rejected,
    and the solve ends normally at a finite point."""
    x0 = jax.random.uniform(jax.random.key(3), (N,), minval=-0.5, maxval=0.5)
    # NaN on the side of x0 up the gradient's first coordinate, where the probe never goes
    up = float(jnp.sign(jax.grad(_rastrigin)(x0)[0]))

    def nan_side(z):
        return up * (z[0] - x0[0]) > 0.05

    def f(z):
        return jnp.where(nan_side(z), jnp.nan, _rastrigin(z))

    seen = []

    def f_np(z):
        v, g = jax.value_and_grad(f)(jnp.asarray(z, jnp.float32))
        seen.append(np.asarray(z, np.float64))
        return float(v), np.asarray(g)

    rounds, k = 2, 8
    res = optimus.minimize(
        f_np,
        np.asarray(x0),
        jac=True,
        steps=40,
        max_evals=40,
        gtol=0.0,
        options={"smooth_rounds": rounds, "smooth_samples": k},
    )
    pts = np.asarray(seen[2 : 2 + rounds * k])
    nan_pts = int(sum(bool(nan_side(p)) for p in pts))
    assert not nan_side(seen[1])
    assert nan_pts > 0
    # every round's samples still come in antithetic pairs about one centre
    for r in range(rounds):
        rp = pts[r * k : (r + 1) * k]
        mids = (rp[0::2] + rp[1::2]) / 2
        np.testing.assert_allclose(mids, np.broadcast_to(mids[0], mids.shape), atol=1e-6)
    assert res.status != optimus.Status.NONFINITE and np.isfinite(res.fun)
    assert res.nfev == 40 and res.n_rejected >= nan_pts


def test_with_bounds_the_centre_stays_in_the_box():
    """The smoothed gradient pushes the centre out of the box (the optimum lies outside);
    the driver's projection (solve._project, as minimize applies it with bounds) holds the
    centre on the bound and moves a pending sample with it."""
    from optimus.solve import _project

    def f(z):
        return _rastrigin(z - 1.5)

    rounds, k = 4, 8
    net = _shipped(smooth_rounds=rounds, smooth_samples=k, smooth_step=1.0)
    vg = jax.jit(jax.value_and_grad(f))
    state = model_init(net, jnp.full(N, 0.6))
    centres, unprojected = [], []
    for _ in range(2 + rounds * k):
        v, g = vg(state.x)
        state = model_update(net, state, v, g)
        unprojected.append(np.asarray(state.centre))
        state = _project(state)
        assert np.all(np.abs(np.asarray(state.x)) <= 1)
        centres.append(np.asarray(state.centre))
        if int(state.phase) == S.SMOOTH and int(state.sample) == 0:
            # a fresh round: its first sample is centre + radius * xi (clipped)
            xi = S._perturbation(jnp.ones(N, bool), state.round, jnp.int32(0), jnp.float32)
            radius = net.config.smooth_rho * net.config.smooth_decay ** int(state.round)
            expect = np.clip(centres[-1] + radius * np.asarray(xi), -1, 1)
            np.testing.assert_allclose(np.asarray(state.x), expect, atol=1e-6)
    assert np.all(np.abs(np.asarray(centres)) <= 1)
    assert np.max(np.asarray(unprojected)) > 1  # the projection had work to do
    assert np.max(np.asarray(centres)) == 1.0


def test_the_counters_add_up_across_the_fresh_start():
    net = _shipped(smooth_rounds=1, smooth_samples=2)
    x0 = jax.random.uniform(jax.random.key(3), (N,), minval=-0.8, maxval=0.8)
    _, _, _, states = _drive(net, _rastrigin, x0, 4)
    before = states[3]  # x0, the probe, two samples: the final centre is pending
    assert int(before.phase) == S.CENTRE
    inner = before.inner
    inner = eqx.tree_at(lambda s: s.inner.n_fallback, inner, jnp.int32(3))
    inner = eqx.tree_at(lambda s: s.n_reject, inner, jnp.int32(5))
    before = eqx.tree_at(lambda s: s.inner, before, inner)
    assert int(before.n_fallback) == 3 and int(before.n_reject) == 5
    v, g = jax.value_and_grad(_rastrigin)(before.x)
    after = model_update(net, before, v, g)
    assert int(after.phase) == S.OFF and int(after.inner.t) == 0
    assert int(after.n_fallback) == 3 and int(after.n_reject) == 5


def test_minimize_shortens_the_phase_to_fit_the_budget():
    from optimus.solve import _fit_smoothing

    net = optimus.load_pretrained("optimus")
    assert net.config.smooth_rounds == 8 and net.config.smooth_samples == 8
    # R * k + 3 <= 0.7 * budget
    assert [_fit_smoothing(net, b).config.smooth_rounds for b in (100, 200, 50, 14, 10)] == [
        8,
        8,
        4,
        0,
        0,
    ]
    assert _fit_smoothing(net, 100) is net
    # in minimize: a 30-evaluation budget gets 2 rounds unless the rounds are given
    x0 = jax.random.uniform(jax.random.key(5), (N,), minval=-0.9, maxval=0.9)
    kw = dict(steps=30, max_evals=30, gtol=0.0)
    fitted = optimus.minimize(_rastrigin, x0, **kw)
    two = optimus.minimize(_rastrigin, x0, **kw, options={"smooth_rounds": 2})
    eight = optimus.minimize(_rastrigin, x0, **kw, options={"smooth_rounds": 8})
    np.testing.assert_array_equal(np.asarray(fitted.x), np.asarray(two.x))
    assert not np.array_equal(np.asarray(fitted.x), np.asarray(eight.x))
