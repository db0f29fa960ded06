"""PES and ES meta-gradient estimators against the exact (autodiff) and the brute-force
(finite-difference) meta-gradient on a tiny problem."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimus.meta.pes import es_estimate, pes_estimate, pes_init, tbptt_estimate


class ToyState(eqx.Module):
    x: jax.Array
    a: jax.Array
    remaining: jax.Array


class ToyTask(eqx.Module):
    """Inner problem f(x) = a x² / 2 solved by x ← x − e^{θ0} a x − θ1 x³ / 10; loss x²."""

    horizon: int = eqx.field(static=True)

    def init(self, theta, key, stagger):
        k1, k2 = jax.random.split(key)
        return ToyState(
            x=jax.random.normal(k1, ()),
            a=jax.random.uniform(k2, (), minval=0.5, maxval=2.0),
            remaining=jnp.asarray(self.horizon, jnp.int32),
        )

    def unroll(self, theta, state, num_steps, next_state):
        def body(carry, _):
            s, seg = carry
            loss = s.x**2 / self.horizon
            x = s.x - jnp.exp(theta[0]) * s.a * s.x - theta[1] * s.x**3 / 10
            s = ToyState(x=x, a=s.a, remaining=s.remaining - 1)
            done = s.remaining <= 0
            s = jax.tree.map(lambda p, q: jnp.where(done, q, p), s, next_state)
            return (s, seg | done), (loss, seg)

        (state, fresh), (losses, seg) = jax.lax.scan(
            body, (state, jnp.asarray(False)), None, length=num_steps
        )
        return state, losses, seg, fresh


THETA = jnp.asarray([jnp.log(0.3), 0.2])


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _pes_sum(task, theta, key, num_pairs, truncation, num_truncations, sigma):
    """Sum of PES estimates over consecutive truncations with theta held fixed, the exact
    gradient of the particles' total loss over the same inner steps (autodiff), and the
    brute-force gradient of that loss by central finite differences (step 1e-3)."""
    state = pes_init(task, theta, key, num_pairs)
    # no staggering in ToyTask: every particle starts its problem at step 0
    total = jnp.zeros_like(theta)
    seq_keys = jax.random.split(jax.random.fold_in(key, 1), num_truncations)
    start = state
    for k in seq_keys:
        g, state, _ = pes_estimate(task, theta, state, k, sigma=sigma, truncation=truncation)
        total = total + g

    def exact_loss(th):
        s = start.pos
        loss = 0.0
        for k in seq_keys:
            # the next problem used on reset is drawn exactly as pes_estimate draws it
            _, k_next = jax.random.split(k)
            nxt = jax.vmap(lambda kk: task.init(th, kk, False))(jax.random.split(k_next, num_pairs))
            s, losses, _, _ = jax.vmap(lambda st, n: task.unroll(th, st, truncation, n))(s, nxt)
            loss = loss + jnp.sum(losses, axis=1)
        return jnp.mean(loss)

    h = 1e-3
    fd = jnp.stack(
        [
            (exact_loss(theta.at[i].add(h)) - exact_loss(theta.at[i].add(-h))) / (2 * h)
            for i in range(theta.size)
        ]
    )
    return total, jax.grad(exact_loss)(theta), fd


def test_pes_matches_exact_gradient_including_resets_inside_truncations():
    # horizon 5 and truncation 2: the first problem ends inside the third truncation
    task = ToyTask(horizon=5)
    est, exact = [], None
    for b in range(12):
        g, exact, fd = _pes_sum(task, THETA, jax.random.key(b), 2000, 2, 4, 0.01)
        est.append(np.asarray(g))
        # the reference itself, checked by brute force: finite differences of the same loss
        np.testing.assert_allclose(np.asarray(fd), np.asarray(exact), rtol=2e-3, atol=1e-4)
    est = np.stack(est)
    mean, sem = est.mean(0), est.std(0, ddof=1) / np.sqrt(len(est))
    exact, fd = np.asarray(exact), np.asarray(fd)
    assert np.all(np.abs(mean - exact) < 4 * sem + 1e-3 * np.abs(exact)), (mean, sem, exact)
    # the PES estimate against the brute-force (finite-difference) meta-gradient directly
    assert np.all(np.abs(mean - fd) < 4 * sem + 3e-3 * np.abs(fd)), (mean, sem, fd)
    # and it is not trivially noisy: the estimate resolves the gradient to ~15 %
    np.testing.assert_allclose(mean, exact, rtol=0.15)
    np.testing.assert_allclose(mean, fd, rtol=0.15)


def test_pes_with_a_reset_exactly_at_a_truncation_boundary():
    """Horizon 4, truncation 2: problems end exactly at truncation ends; the next problem's
    accumulator must start from zero, not carry the old problem's perturbations."""
    task = ToyTask(horizon=4)
    est = []
    for b in range(12):
        g, exact, _ = _pes_sum(task, THETA, jax.random.key(50 + b), 2000, 2, 4, 0.01)
        est.append(np.asarray(g))
    est = np.stack(est)
    mean, sem = est.mean(0), est.std(0, ddof=1) / np.sqrt(len(est))
    assert np.all(np.abs(mean - np.asarray(exact)) < 4 * sem + 1e-3 * np.abs(exact))
    np.testing.assert_allclose(mean, exact, rtol=0.15)


def test_es_reference_estimator_matches_exact_gradient():
    task = ToyTask(horizon=6)

    @jax.jit
    def both(key):
        g, _ = es_estimate(task, THETA, key, sigma=0.01, num_pairs=2000, horizon=6)

        def full(th):
            # es_estimate draws its problems from the second half of the split key
            starts = jax.vmap(lambda k: task.init(th, k, False))(
                jax.random.split(jax.random.split(key)[1], 2000)
            )
            return jnp.mean(jax.vmap(lambda s: jnp.sum(task.unroll(th, s, 6, s)[1]))(starts))

        return g, jax.grad(full)(THETA)

    diffs, exacts = [], []
    for b in range(10):
        g, exact = both(jax.random.key(100 + b))
        diffs.append(np.asarray(g - exact))
        exacts.append(np.asarray(exact))
    diff = np.stack(diffs)
    sem = diff.std(0, ddof=1) / np.sqrt(len(diff))
    assert np.all(np.abs(diff.mean(0)) < 4 * sem + 1e-4)
    np.testing.assert_allclose(diff.mean(0), 0.0, atol=0.15 * np.abs(np.mean(exacts, 0)).max())


def test_tbptt_is_the_gradient_of_the_truncation_loss_by_finite_differences():
    """TBPTT over truncations of 3 steps on horizon-4 problems (a reset inside the second
    truncation): the estimate equals central finite differences of the same truncation's
    mean loss, and the particles advance exactly as the loss's unroll does."""
    task = ToyTask(horizon=4)
    state = pes_init(task, THETA, jax.random.key(7), 64)
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA, jnp.float64)
        state = jax.tree.map(
            lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state
        )
        for k in range(2):
            key = jax.random.key(20 + k)
            g, new, metrics = tbptt_estimate(task, theta, state, key, truncation=3)

            def loss(th, state=state, key=key):
                nxt = jax.vmap(lambda kk: task.init(th, kk, False))(jax.random.split(key, 64))
                out = jax.vmap(lambda s, n: task.unroll(th, s, 3, n))(state.pos, nxt)
                return jnp.mean(jnp.sum(out[1], axis=1))

            h = 1e-6
            fd = [
                (loss(theta.at[i].add(h)) - loss(theta.at[i].add(-h))) / (2 * h)
                for i in range(theta.size)
            ]
            np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-5, atol=1e-9)
            assert float(metrics["loss"]) == pytest.approx(float(loss(theta)))
            assert np.any(np.asarray(g) != 0)
            state = new
        assert int(metrics["resets"]) == 64  # every problem ended inside the second truncation


def test_nonfinite_losses_are_clipped_by_the_learned_task():
    from optimus.meta.tasks import LOSS_MAX, TaskConfig, make_task
    from optimus.nets import NetConfig, build_net

    net = build_net(NetConfig(width=8, depth=1, num_heads=2), jax.random.key(0))
    task, _ = make_task(net, TaskConfig(n_max=4, horizon=10))
    for bad in (jnp.nan, jnp.inf):
        loss = task.step_loss(jnp.asarray(bad), jnp.asarray(1.0))
        assert float(loss) == pytest.approx(LOSS_MAX / 10)
    assert float(task.step_loss(jnp.asarray(1e-3), jnp.asarray(1.0))) == pytest.approx(-0.3)
    assert float(task.step_loss(jnp.asarray(1e-30), jnp.asarray(1.0))) == pytest.approx(-1.2)


def test_best_so_far_meta_loss_is_the_running_minimum_of_the_current_one():
    """meta_loss = "best" scores min_{s<=t} f(z_s): on the same unroll its per-step losses are
    the running minimum of the "current" losses (log and clip are monotone), across a reset
    to a new problem inside the unroll too; a non-monotone rule makes them differ."""
    import dataclasses

    from optimus.meta.tasks import TaskConfig, make_task
    from optimus.nets import with_config
    from optimus.pretrained import load_pretrained

    shipped = load_pretrained("optimus")
    net = with_config(shipped, dataclasses.replace(shipped.config, monotone=False))
    cfg = TaskConfig(functions=("rastrigin", "ackley"), n_max=32, horizon=12)
    task, theta = make_task(net, cfg)
    best_task = dataclasses.replace(task, config=dataclasses.replace(cfg, meta_loss="best"))
    s0 = task.init(theta, jax.random.key(1), False)
    nxt = task.init(theta, jax.random.key(2), False)
    cur = np.asarray(task.unroll(theta, s0, 20, nxt)[1])
    best = np.asarray(best_task.unroll(theta, s0, 20, nxt)[1])
    expect = np.concatenate(
        [np.minimum.accumulate(cur[:12]), np.minimum.accumulate(cur[12:])]
    )  # the reset after 12 steps starts a new running minimum
    np.testing.assert_array_equal(best, expect)
    assert np.any(best != cur)
    with pytest.raises(ValueError, match="meta_loss"):
        TaskConfig(meta_loss="last")
