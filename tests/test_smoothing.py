"""The Gaussian-smoothing layer (optimus.optimizers.smoothing) around the shipped Optimus."""

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
    net = with_rule(optimus.load_pretrained("optimus"), smooth_rounds=rounds, smooth_samples=k)
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
        {"smooth_min_dim": 0},
        {"smooth_step": float("nan")},
    ):
        with pytest.raises(ValueError, match="smooth_"):
            with_rule(net, **bad)
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\n[model]\nsmooth_rounds = 2\n')
    with pytest.raises(ValueError, match="smooth_rounds must be 0 in meta-training"):
        load_config(cfg)
