"""The step-acceptance layer (optimus.optimizers.acceptance) and learned models that use it."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus import functions as fn
from optimus.nets import build_net
from optimus.nets.optimus import NetConfig
from optimus.optimizers.acceptance import (
    BACKTRACK,
    INTERP_MIN,
    STALL_REL_ULPS,
    STALL_ULPS,
    WARMUP,
    AcceptState,
    accept_init,
    accept_update,
)
from optimus.optimizers.learned import (
    learned,
    learned_init,
    learned_update,
    model_init,
    model_update,
)


class GD(eqx.Module):
    """A fixed-step gradient descent in reverse-communication form (the inner optimizer)."""

    x: jax.Array
    t: jax.Array
    nit: jax.Array
    failed: jax.Array


def gd_init(x0):
    z = jnp.zeros((), jnp.int32)
    return GD(x=x0, t=z, nit=z, failed=jnp.zeros((), bool))


def gd_update(lr):
    def update(s, value, grad):
        del value
        return GD(x=s.x - lr * grad, t=s.t + 1, nit=s.nit + 1, failed=s.failed)

    return update


def drive(update, state, f, steps, **kw):
    """Run ``steps`` evaluations; return the trial points, their values and the states."""
    xs, fs, states = [], [], []
    for _ in range(steps):
        v, g = jax.value_and_grad(f)(state.x)
        xs.append(np.asarray(state.x))
        fs.append(float(v))
        state = accept_update(update, state, v, g, **kw)
        states.append(state)
    return xs, fs, states


def test_overshooting_step_is_pulled_back_halfway():
    # gradient descent with lr 1.5 on f = ||x||^2 overshoots: x -> x - 3x = -2x (f grows 4x)
    def f(x):
        return jnp.sum(x**2)

    state = accept_init(gd_init(jnp.array([1.0, -2.0])))
    xs, fs, states = drive(gd_update(1.5), state, f, 8)
    accepted_f = [float(s.f_best) for s in states]
    # the accepted values never increase after the warm-up
    assert all(b <= a for a, b in zip(accepted_f[WARMUP:], accepted_f[WARMUP + 1 :], strict=False))
    for i in range(WARMUP, len(fs) - 1):
        rejected = states[i].n_reject > states[i - 1].n_reject
        if rejected:
            # the next trial point is x_best + beta (x_trial - x_best)
            xb = np.asarray(states[i].x_best)
            np.testing.assert_allclose(xs[i + 1], xb + BACKTRACK * (xs[i] - xb), rtol=1e-6)
    assert int(states[-1].n_reject) > 0
    # with rejections the layer makes progress where plain GD diverges
    assert float(states[-1].f_best) < fs[0]


def test_interpolating_backtrack_lands_on_the_line_minimum_of_a_quadratic():
    """``interpolate=True``: a rejected overshoot on a quadratic is pulled back to the exact
    minimiser along the step (beta from f_b, g_b'p and f), safeguarded into [0.1, 0.5]."""
    A = jnp.diag(jnp.array([1.0, 10.0]))

    def f(x):
        return 0.5 * x @ A @ x

    x0 = jnp.array([1.0, 1.0])
    _, fs, states = drive(gd_update(0.35), accept_init(gd_init(x0)), f, 6, interpolate=True)
    betas = []
    for i in range(WARMUP, len(states) - 1):
        if states[i].n_reject > states[i - 1].n_reject:
            xb = np.asarray(states[i].x_best, np.float64)
            p = np.asarray(states[i - 1].x, np.float64) - xb  # the rejected step
            nxt = np.asarray(states[i].x, np.float64)
            beta = np.dot(nxt - xb, p) / np.dot(p, p)
            Ad = np.asarray(A, np.float64)
            exact = -np.dot(Ad @ xb, p) / np.dot(p, Ad @ p)
            np.testing.assert_allclose(nxt, xb + beta * p, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(beta, np.clip(exact, INTERP_MIN, BACKTRACK), rtol=1e-4)
            betas.append(beta)
    assert betas and min(betas) < BACKTRACK  # it did more than halve
    # a non-finite trial value falls back to halving
    s = states[-1]
    s2 = accept_update(gd_update(0.35), s, jnp.nan, jnp.zeros(2), interpolate=True)
    np.testing.assert_allclose(
        np.asarray(s2.x), np.asarray(s.x_best + BACKTRACK * (s.x - s.x_best)), rtol=1e-6
    )


def test_nonmonotone_window_accepts_against_the_recent_worst():
    """``window = M``: a trial point is accepted iff its value is at most the largest of the
    last M accepted values; an uphill step can be accepted, and M = 1 is the monotone rule
    (same trajectory as the default)."""

    def f(x):  # GD with lr 0.11 on curvature 19 overshoots slightly (|1 - 2.09| = 1.09 > 1)
        return jnp.sum(jnp.array([0.5, 9.5]) * x**2)

    x0 = jnp.array([1.0, 1.0])
    _, fs, states = drive(gd_update(0.11), accept_init(gd_init(x0), window=4), f, 30)
    accepted = [fs[0]]
    uphill = 0
    for i in range(1, len(fs)):
        was_accepted = int(states[i].n_reject) == int(states[i - 1].n_reject)
        if i >= WARMUP:
            assert was_accepted == (fs[i] <= max(accepted[-4:]))
        if was_accepted:
            uphill += fs[i] > accepted[-1]
            accepted.append(fs[i])
            assert float(states[i].f_best) == fs[i]  # x_b is the last accepted point
    assert uphill > 0
    _, fs1, st1 = drive(gd_update(0.11), accept_init(gd_init(x0), window=1), f, 30)
    _, fs0, st0 = drive(gd_update(0.11), accept_init(gd_init(x0)), f, 30)
    assert fs1 == fs0 and int(st1[-1].n_reject) > int(states[-1].n_reject)
    with pytest.raises(ValueError, match="window"):
        accept_init(gd_init(x0), window=0)
    with pytest.raises(ValueError, match="accept_window"):
        NetConfig(accept_window=0)


def test_a_descent_run_is_never_rejected_and_equals_the_inner_optimizer():
    def f(x):
        return jnp.sum((x - 0.3) ** 2)

    x0 = jnp.array([1.0, -1.0, 0.5])
    _, fs, states = drive(gd_update(0.1), accept_init(gd_init(x0)), f, 10)
    assert int(states[-1].n_reject) == 0
    plain = gd_init(x0)
    for _ in range(10):
        plain = gd_update(0.1)(plain, f(plain.x), jax.grad(f)(plain.x))
    np.testing.assert_array_equal(np.asarray(states[-1].x), np.asarray(plain.x))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_trial_points_are_rejected_not_accepted(bad):
    # the objective is non-finite for x > 0.5: GD from 0 with a long step lands there
    def f(x):
        return jnp.where(x[0] > 0.5, bad, (x[0] - 2.0) ** 2)

    state = accept_init(gd_init(jnp.array([0.0])))
    _, fs, states = drive(gd_update(1.0), state, f, 12)
    assert all(np.isfinite(float(s.f_best)) for s in states)
    assert int(states[-1].n_reject) > 0
    assert float(states[-1].x_best[0]) <= 0.5
    assert float(states[-1].f_best) < 4.0  # it moved towards the boundary of the valid region


def _random_net(monotone: bool, kind: str = "optimus"):
    cfg = NetConfig(kind=kind, width=8, depth=1, num_heads=2, hidden=8, monotone=monotone)
    return build_net(cfg, jax.random.key(3))


def test_model_without_monotone_is_the_bare_learned_optimizer():
    net = _random_net(False)
    x0 = jnp.linspace(-1.0, 1.0, 5)
    assert not isinstance(model_init(net, x0), AcceptState)
    net_m = _random_net(True)
    assert isinstance(model_init(net_m, x0), AcceptState)
    # the two networks differ only in the flag: identical until the first rejection
    a = learned_init(net, x0)
    b = model_init(net_m, x0)

    def f(x):
        return jnp.sum(x**2)

    v, g = jax.value_and_grad(f)(x0)
    a = learned_update(net, a, v, g)
    b = learned(net_m).update(b, v, g)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))


@pytest.mark.parametrize("kind", ["optimus", "mlp"])
def test_monotone_learned_minimize_accepts_only_decreases(kind):
    net = _random_net(True, kind)
    problem = fn.make_problem("rosenbrock", 6, variant="transformed", key=jax.random.key(1))
    x0 = problem.sample_x0(jax.random.key(2))
    res = optimus.minimize(
        problem, x0, method=kind, params=net, steps=60, gtol=0.0, bounds=(problem.lo, problem.hi)
    )
    assert res.success and np.all(np.isfinite(res.x))
    f0 = float(problem(x0))
    # float32: the box map x <-> z rounds, so compare on the scale of the start value
    assert res.fun == pytest.approx(float(problem(jnp.asarray(res.x))), abs=1e-6 * f0)
    assert res.fun < 1e-2 * f0


def test_shipped_models_record_the_rule_they_were_trained_with():
    for name in ("optimus", "optimus-noprecond", "mlp"):
        net = optimus.load_pretrained(name)
        card = optimus.pretrained.model_card(name)
        assert dataclasses.asdict(net.config)["monotone"] == card["train_config"]["model"].get(
            "monotone", False
        )


def _drive_memory(update, state, f, steps):
    fs, states = [], []
    for _ in range(steps):
        v, g = jax.value_and_grad(f)(state.x)
        fs.append(float(v))
        state = accept_update(update, state, v, g, memory=True)
        states.append(state)
    return fs, states


def test_step_memory_shortens_proposals_after_rejections():
    """GD with lr 1.5 on ||x||^2 proposes steps 4x too long every time: plain backtracking
    pays two rejections per accepted step, with memory the trust factor settles and the same
    budget brings a far lower objective; the trust factor stays in (0, 1]."""

    def f(x):
        return jnp.sum(x**2)

    x0 = jnp.array([1.0, -2.0])
    _, fs_plain, st_plain = drive(gd_update(1.5), accept_init(gd_init(x0)), f, 30)
    fs_mem, st_mem = _drive_memory(gd_update(1.5), accept_init(gd_init(x0)), f, 30)
    assert int(st_mem[-1].n_reject) < int(st_plain[-1].n_reject)
    assert float(st_mem[-1].f_best) < 1e-3 * float(st_plain[-1].f_best)
    trusts = np.array([float(s.trust) for s in st_mem])
    assert np.all((trusts > 0) & (trusts <= 1))
    assert trusts.min() < 1  # it did shrink
    # without memory the factor never moves
    assert all(float(s.trust) == 1.0 for s in st_plain)
    # accepted values still never increase after the warm-up
    acc = [float(s.f_best) for s in st_mem]
    assert all(b <= a for a, b in zip(acc[WARMUP:], acc[WARMUP + 1 :], strict=False))


def test_step_memory_leaves_a_descent_run_unchanged():
    def f(x):
        return jnp.sum((x - 0.3) ** 2)

    x0 = jnp.array([1.0, -1.0, 0.5])
    _, _, plain = drive(gd_update(0.1), accept_init(gd_init(x0)), f, 10)
    _, mem = _drive_memory(gd_update(0.1), accept_init(gd_init(x0)), f, 10)
    np.testing.assert_array_equal(np.asarray(plain[-1].x), np.asarray(mem[-1].x))
    assert float(mem[-1].trust) == 1.0


def _ascent(lr):
    """An inner optimizer that always proposes an uphill step: after the warm-up every
    trial point is rejected and backtracking shrinks towards the best point until it
    stalls at floating-point resolution."""

    def update(s, value, grad):
        del value
        return GD(x=s.x + lr * grad, t=s.t + 1, nit=s.nit + 1, failed=s.failed)

    return update


def _sphere(x):
    return jnp.sum(x**2)


_HOME = jnp.array([1.0, -2.0])  # start of the restart tests
_JUMP = jnp.array([3.0, 3.0])  # their restart point is home + jump


def _jump_restart(inner, x_home, count):
    return x_home + _JUMP


def test_restart_fires_at_a_stall_from_the_home_point_and_is_accepted_whatever_its_value():
    f, x0, jump, restart = _sphere, _HOME, _JUMP, _jump_restart

    plain = drive(_ascent(0.1), accept_init(gd_init(x0)), f, 40)
    with_restart = drive(
        _ascent(0.1), accept_init(gd_init(x0), restart=True), f, 40, restart=restart
    )
    xs, fs, states = with_restart
    # the warm-up accepts x0 and the uphill x1 = 1.2 x0; x0 stays home (the best value)
    np.testing.assert_array_equal(np.asarray(states[1].x_home), np.asarray(x0))
    assert float(states[1].f_home) == float(f(x0))
    x1 = np.asarray(states[1].x_best)
    eps = np.finfo(np.float32).eps
    stalls = [
        i
        for i in range(len(xs) - 1)
        if np.all(np.abs(xs[i + 1] - np.asarray(x0) - np.asarray(jump)) == 0)
    ]
    assert stalls, "no restart point was proposed"
    i = stalls[0]
    # up to the stall the run is the plain one, bit for bit
    for a, b in zip(plain[0][: i + 1], xs[: i + 1], strict=True):
        np.testing.assert_array_equal(a, b)
    # the rejected trial point before it was backtracked to within STALL_ULPS ulps of x1,
    # and the plain run never gets below f(x1) again
    pulled = x1 + BACKTRACK * (xs[i] - x1)
    assert np.all(np.abs(pulled - x1) <= STALL_ULPS * eps * np.abs(x1))
    assert all(float(s.f_best) == float(f(x1)) for s in plain[2][i:])
    # the restart point x0 + jump (f = 17) is accepted although f(x1) = 7.2 is lower
    assert fs[i + 1] > float(states[i].f_best)
    assert float(states[i + 1].f_best) == fs[i + 1]
    np.testing.assert_array_equal(np.asarray(states[i + 1].x_home), np.asarray(x0))
    # the window is back to normal: the next uphill proposal is rejected again
    assert int(states[i + 2].n_reject) == int(states[i + 1].n_reject) + 1


def test_restart_leaves_a_run_without_stalls_unchanged():
    def f(x):
        return jnp.sum((x - 0.3) ** 2)

    def restart(inner, x_home, count):
        return x_home + 1.0

    x0 = jnp.array([1.0, -1.0, 0.5])
    _, _, plain = drive(gd_update(1.5), accept_init(gd_init(x0)), f, 12)
    _, _, hop = drive(
        gd_update(1.5), accept_init(gd_init(x0), restart=True), f, 12, restart=restart
    )
    assert int(plain[-1].n_reject) > 0  # backtracking happened, but never down to rounding
    for a, b in zip(plain, hop, strict=True):
        np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
        assert float(a.f_best) == float(b.f_best)


def test_restart_needs_a_state_that_keeps_the_home_point():
    state = accept_init(gd_init(jnp.array([1.0])))
    with pytest.raises(ValueError, match="restart=True"):
        accept_update(
            gd_update(0.1), state, jnp.asarray(1.0), jnp.array([2.0]), restart=lambda i, x, c: x
        )


def test_restart_of_the_shipped_optimus_uses_the_budget_a_stalled_run_wastes():
    """Rastrigin at n = 10 (benchmark seed 0): without restarts the shipped weights stall in
    a local minimum and spend the rest of the 100 evaluations within rounding of it; with
    ``restart = 0.1`` the stalled evaluations become restarts 0.1 box half-widths from the
    best point (bench_results/restart/)."""
    from optimus.bench.run import _problem
    from optimus.nets import with_config

    problem, x0 = _problem("rastrigin", "transformed", 10, 0, tuning=False)
    vg = jax.jit(jax.value_and_grad(problem.unit_objective))
    shipped = optimus.load_pretrained("optimus")
    trials = {}
    for r in (0.0, 0.1):
        # without the smoothing phase (a layer around this one; tests/test_smoothing.py)
        config = dataclasses.replace(shipped.config, restart=r, smooth_rounds=0)
        net = with_config(shipped, config)
        upd = jax.jit(lambda s, v, g, net=net: model_update(net, s, v, g))
        st = model_init(net, problem.to_unit(x0))
        xs, bests = [], []
        for _ in range(100):
            v, g = vg(st.x)
            xs.append(np.asarray(st.x))
            st = upd(st, v, g)
            bests.append(np.asarray(st.x_best))
        trials[r] = (np.array(xs), np.array(bests), float(st.f_best))
    xs, bests, _ = trials[0.0]
    far = np.max(np.abs(xs[1:] - bests[:-1]), axis=1)
    # stalled: almost all of the last 60 trial points are at rounding level (all of them on an
    # AMD EPYC; on an Intel Xeon 6 of them are small moves, XLA's CPU rounding differs), and
    # none is a jump of a restart's size
    assert np.sum(far[40:] < 1e-5) >= 50
    assert not np.any(np.abs(far[40:] - 0.1) < 0.05)
    xs_r, bests_r, _ = trials[0.1]
    far_r = np.max(np.abs(xs_r[1:] - bests_r[:-1]), axis=1)
    # restarts: trial points ~0.1 away from the best point, as the restart rule places them
    assert np.sum(np.abs(far_r[40:] - 0.1) < 0.05) >= 1
    assert np.all(np.isfinite(xs_r))


def test_restart_patience_fires_after_that_many_evaluations_without_progress():
    """``patience = P``: the restart comes once P evaluations in a row brought no accepted
    decrease larger than STALL_REL_ULPS ulps (relative), long before backtracking reaches
    rounding."""

    f, x0, jump, restart = _sphere, _HOME, _JUMP, _jump_restart

    def first_restart(**kw):
        xs, _, _ = drive(
            _ascent(0.1), accept_init(gd_init(x0), restart=True), f, 60, restart=restart, **kw
        )
        hits = [i for i, x in enumerate(xs) if np.all(x == np.asarray(x0 + jump))]
        return hits[0] if hits else None

    ulp = first_restart()
    assert ulp is not None and ulp > 20  # halving ~25 times down to a few ulps
    for patience in (3, 5, 8):
        # evaluation 0 (x0) is progress; the warm-up accepts the uphill x1 unjudged, no
        # progress (idle 1); every later evaluation is a rejection, and the one that makes
        # P idle evaluations proposes the restart point, evaluated next
        assert first_restart(patience=patience) == WARMUP + patience - 1


def test_restart_patience_counts_only_clear_decreases():
    """Accepted values that fall by less than STALL_REL_ULPS ulps relative (a run creeping at
    float32 resolution) do not reset the idle count; a clear decrease does."""
    rel = STALL_REL_ULPS * np.finfo(np.float32).eps

    state = accept_init(gd_init(jnp.array([1.0])), restart=True)
    kw = dict(restart=lambda i, x, c: x + 1.0, patience=4)
    f0 = 100.0
    # warm-up: the first point is progress, the second (the same value) is not
    for v in (f0, f0):
        state = accept_update(gd_update(0.0), state, jnp.asarray(v), jnp.array([0.0]), **kw)
    assert int(state.n_idle) == 1
    tiny = f0 * (1 - rel / 4)
    state = accept_update(gd_update(0.0), state, jnp.asarray(tiny), jnp.array([0.0]), **kw)
    assert float(state.f_best) == np.float32(tiny)  # accepted (a decrease) ...
    assert int(state.n_idle) == 2  # ... but not progress
    clear = f0 * (1 - 4 * rel)
    state = accept_update(gd_update(0.0), state, jnp.asarray(clear), jnp.array([0.0]), **kw)
    assert int(state.n_idle) == 0


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3", np.int64(-2)])
def test_bad_restart_patience_is_refused(bad):
    with pytest.raises(ValueError, match="restart_patience"):
        NetConfig(monotone=True, restart=0.1, restart_patience=bad)


def test_restart_patience_takes_numpy_integers_as_plain_ints():
    cfg = NetConfig(monotone=True, restart=0.1, restart_patience=np.int64(10))
    assert cfg.restart_patience == 10 and type(cfg.restart_patience) is int


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(monotone=True, restart=-0.1), "restart"),
        (dict(monotone=True, restart=float("nan")), "restart"),
        (dict(monotone=True, restart=float("inf")), "restart"),
    ],
)
def test_bad_restart_config_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        NetConfig(**bad)


def test_restart_is_ignored_without_step_acceptance():
    """Like the other acceptance options, ``restart`` only acts inside the acceptance layer:
    with ``monotone = False`` the model is the bare learned optimizer, restart or not."""
    cfg = NetConfig(width=8, depth=1, num_heads=2, monotone=False, restart=0.1)
    net = build_net(cfg, jax.random.key(0))
    x0 = jnp.linspace(-1.0, 1.0, 5)
    assert not isinstance(model_init(net, x0), AcceptState)


def test_restart_point_ignores_padding():
    """The restart vector is drawn per coordinate index: a padded problem restarts its valid
    coordinates exactly as the unpadded one, and padding never moves."""
    from optimus.optimizers.learned import _restart_point

    cfg = NetConfig(width=8, depth=1, num_heads=2, monotone=True, restart=0.1)
    net = build_net(cfg, jax.random.key(0))
    point = _restart_point(net)
    n, pad = 5, 12
    home = jnp.linspace(-0.5, 0.5, n)
    a = point(learned_init(net, home), home, jnp.int32(7))
    homep = jnp.concatenate([home, jnp.full(pad - n, 3.0)])
    b = point(learned_init(net, homep, jnp.arange(pad) < n), homep, jnp.int32(7))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:n])
    np.testing.assert_array_equal(np.asarray(b)[n:], np.asarray(homep)[n:])
    np.testing.assert_allclose(np.abs(np.asarray(a) - np.asarray(home)), 0.1, rtol=1e-6)
    c = point(learned_init(net, home), home, jnp.int32(8))
    assert not np.array_equal(np.asarray(a), np.asarray(c))  # another counter, another draw
    assert (
        _restart_point(build_net(dataclasses.replace(cfg, restart=0.0), jax.random.key(0))) is None
    )
