r"""Evolution-strategies meta-gradient estimators over truncated unrolls.

Both estimators work on a *truncated task* (see :class:`optimus.meta.tasks.TruncatedTask`):
``task.init(theta, key, stagger)`` gives an inner state; ``task.unroll(theta, state, K,
next_state)`` advances it ``K`` steps and returns the new state, per-step losses, per step
whether it belongs to a problem that was *started inside* this truncation (``seg = 1``) or to
the one active at its start (``seg = 0``), and whether the final problem is a new one
(``fresh``). The meta-objective is the sum of the per-step losses over
the inner horizon (the task divides by the horizon, so it is a mean).

**Antithetic ES** (reference, full unrolls from scratch): with
:math:`\epsilon_j \sim \mathcal N(0, \sigma^2 I)`,

.. math:: \hat g = \frac{1}{P} \sum_j \frac{L(\theta + \epsilon_j) - L(\theta - \epsilon_j)}
          {2 \sigma^2} \epsilon_j .

**PES** (Vicol, Metz & Sohl-Dickstein, 2021): particles keep their inner state between outer
steps, each pair :math:`j` draws a fresh :math:`\epsilon_j` per truncation and accumulates
:math:`\xi_j \leftarrow \xi_j + \epsilon_j` since its problem started. With
:math:`L^{\pm}_{j,0}` and :math:`L^{\pm}_{j,1}` the truncation's losses before and after a
reset inside the truncation,

.. math:: \hat g = \frac{1}{P} \sum_j \frac{(L^+_{j,0} - L^-_{j,0})\,\xi_j
          + (L^+_{j,1} - L^-_{j,1})\,\epsilon_j}{2\sigma^2},

after which :math:`\xi_j = \epsilon_j` for pairs whose new problem ran inside the truncation
(it has only seen this truncation's perturbation), :math:`\xi_j = 0` for a problem that
starts exactly at the truncation's end, and :math:`\xi_j` otherwise. Summed over the truncations of
a horizon with :math:`\theta` fixed, this is an unbiased estimate of the gradient of the
Gaussian-smoothed full-horizon meta-objective. Both particles of a pair share the problem and
reset schedule. Non-finite losses are replaced by the task's penalty before differencing.

**Sharding.** Every estimator takes an optional ``particle_sharding`` (a
:class:`jax.sharding.NamedSharding` splitting the leading axis over a device mesh, see
:mod:`optimus.meta.distributed`). It is applied as a sharding constraint to every
particle-batched array (perturbations, fresh problems, new particle states), so that under
``jax.jit`` each device runs only its share of the particles and the mean over particles
becomes one cross-device reduction. The perturbations and problems are drawn for the whole
particle axis from the same keys as without sharding, so the estimate is the same up to the
order of that reduction. With ``None`` (the default) no constraint is added at all.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


class PESState(eqx.Module):
    """Persistent state of the PES particles (``P`` antithetic pairs)."""

    pos: Any  # inner states of the + particles, batched over pairs
    neg: Any  # inner states of the - particles
    xi: jax.Array  # (P, D) accumulated perturbations since each pair's problem started


def _shard(tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
    if sharding is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _fresh(task, theta: jax.Array, keys: jax.Array, sharding: jax.sharding.Sharding | None):
    """Fresh problems for a batch of keys: ``vmap`` of ``task.init``, except on a mesh of
    several CPU devices in one process, where it is a ``lax.map`` (one problem at a time).

    Why: sampling a rotation runs a LAPACK QR, and jaxlib's CPU kernel for a *batch* of QRs
    splits the batch over XLA's intra-op thread pool and blocks until it is done. When every
    CPU device of the process runs that kernel at once, all pool threads block waiting for
    work queued behind themselves: a deadlock (observed with 4 forced CPU devices and 16
    problems per device). One problem at a time never splits. The problems are the same up
    to float rounding; GPUs/TPUs and single-device runs keep the ``vmap``."""
    init = lambda k: task.init(theta, k, False)  # noqa: E731
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None:
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        if len(local) > 1 and local[0].platform == "cpu":
            # (devices, per device): the map runs along each device's own share
            per_device = _shard(keys.reshape(mesh.size, -1), sharding)
            out = jax.vmap(lambda ks: jax.lax.map(init, ks))(per_device)
            return jax.tree.map(lambda a: a.reshape((keys.shape[0],) + a.shape[2:]), out)
    return jax.vmap(init)(keys)


def _perturbations(key: jax.Array, num_pairs: int, theta: jax.Array, sigma: float):
    return sigma * jax.random.normal(key, (num_pairs,) + theta.shape, theta.dtype)


def pes_init(task, theta: jax.Array, key: jax.Array, num_pairs: int) -> PESState:
    """Fresh particles with staggered starts (random remaining horizon)."""
    keys = jax.random.split(key, num_pairs)
    states = jax.vmap(lambda k: task.init(theta, k, True))(keys)
    xi = jnp.zeros((num_pairs,) + theta.shape, theta.dtype)
    return PESState(pos=states, neg=states, xi=xi)


def pes_estimate(
    task,
    theta: jax.Array,
    state: PESState,
    key: jax.Array,
    *,
    sigma: float,
    truncation: int,
    particle_sharding: jax.sharding.Sharding | None = None,
) -> tuple[jax.Array, PESState, dict[str, jax.Array]]:
    """One PES estimate of the meta-gradient at ``theta``; advances every particle by
    ``truncation`` inner steps. Returns ``(grad, new_state, metrics)``."""
    num_pairs = state.xi.shape[0]
    k_eps, k_next = jax.random.split(key)
    eps = _shard(_perturbations(k_eps, num_pairs, theta, sigma), particle_sharding)
    # a fresh problem per pair, used if the pair's current problem ends inside this truncation
    nxt_keys = _shard(jax.random.split(k_next, num_pairs), particle_sharding)
    nxt = _shard(_fresh(task, theta, nxt_keys, particle_sharding), particle_sharding)

    def run(th, s, n):
        return task.unroll(th, s, truncation, n)

    # both particles of every pair in one batch of 2P unrolls (one compiled unroll, a wider
    # vector width); the pairs stay on the leading axis, so a particle sharding still applies
    both = jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), state.pos, state.neg)
    thetas = jnp.stack([theta + eps, theta - eps], axis=1)
    out, losses, segs, freshes = jax.vmap(jax.vmap(run, in_axes=(0, 0, None)))(thetas, both, nxt)
    pos, neg = jax.tree.map(lambda a: a[:, 0], out), jax.tree.map(lambda a: a[:, 1], out)
    loss_p, loss_n = losses[:, 0], losses[:, 1]
    seg, fresh = segs[:, 0], freshes[:, 0]
    l0p, l1p = _split(loss_p, seg)
    l0n, l1n = _split(loss_n, seg)
    xi = state.xi + eps
    g = ((l0p - l0n)[:, None] * xi + (l1p - l1n)[:, None] * eps) / (2 * sigma**2)
    # a problem that started inside the truncation has seen eps only; one that starts at its
    # very end has seen no perturbation yet
    ran_new = jnp.any(seg, axis=1)
    new_xi = jnp.where(ran_new[:, None], eps, jnp.where(fresh[:, None], 0.0, xi))
    reset = fresh
    metrics = {
        "loss": 0.5 * jnp.mean(jnp.sum(loss_p + loss_n, axis=1)),
        "resets": jnp.sum(reset),
    }
    new_state = _shard(PESState(pos=pos, neg=neg, xi=new_xi), particle_sharding)
    return jnp.mean(g, axis=0), new_state, metrics


def tbptt_estimate(
    task,
    theta: jax.Array,
    state: PESState,
    key: jax.Array,
    *,
    truncation: int,
    particle_sharding: jax.sharding.Sharding | None = None,
) -> tuple[jax.Array, PESState, dict[str, jax.Array]]:
    r"""Truncated backpropagation through time: for every particle of ``state.pos`` the
    exact gradient, by reverse-mode autodiff through the inner optimizer's updates
    (Hessian-vector products of the objectives included), of its losses in the next
    ``truncation`` inner steps; the estimate is their mean over the particles whose gradient
    is finite (``metrics["dropped"]`` counts the others). Particles persist and reset as in
    :func:`pes_estimate` (one particle per pair: ``state.neg`` and ``state.xi`` are carried
    unchanged). Low variance but biased for the full-horizon meta-objective: the dependence
    of a truncation's starting state on :math:`\theta` is cut, and particles whose unroll
    has no finite derivative are left out: an iterate that reaches a point where a
    feature normaliser vanishes (a gradient of exactly zero at a minimum, local or global)
    overflows the derivative of that normalisation. That can be many: on a tiny network
    with 16 particles over 6 truncations, 46 of 96 on the sphere, 43 of 96 on Rastrigin,
    2 of 96 on Rosenbrock."""
    keys = _shard(jax.random.split(key, state.xi.shape[0]), particle_sharding)

    def particle(th, s, k):
        nxt = task.init(th, k, False)
        out, losses, _, fresh = task.unroll(th, s, truncation, nxt)
        return jnp.sum(losses), (out, fresh)

    grad = jax.value_and_grad(particle, has_aux=True)
    (values, (pos, fresh)), grads = jax.vmap(grad, in_axes=(None, 0, 0))(theta, state.pos, keys)
    ok = jnp.all(jnp.isfinite(grads), axis=1)
    g = jnp.sum(jnp.where(ok[:, None], grads, 0), axis=0) / jnp.maximum(jnp.sum(ok), 1)
    new_state = _shard(PESState(pos=pos, neg=state.neg, xi=state.xi), particle_sharding)
    metrics = {"loss": jnp.mean(values), "resets": jnp.sum(fresh), "dropped": jnp.sum(~ok)}
    return g, new_state, metrics


def _split(losses: jax.Array, seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(jnp.where(seg, 0, losses), axis=1), jnp.sum(jnp.where(seg, losses, 0), axis=1)


def es_estimate(
    task,
    theta: jax.Array,
    key: jax.Array,
    *,
    sigma: float,
    num_pairs: int,
    horizon: int,
    particle_sharding: jax.sharding.Sharding | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Antithetic ES over full, un-truncated unrolls of ``horizon`` steps from fresh problems."""
    k_eps, k_task = jax.random.split(key)
    eps = _shard(_perturbations(k_eps, num_pairs, theta, sigma), particle_sharding)
    keys = _shard(jax.random.split(k_task, num_pairs), particle_sharding)
    starts = _shard(_fresh(task, theta, keys, particle_sharding), particle_sharding)

    def total(th, s):
        return jnp.sum(task.unroll(th, s, horizon, s)[1])

    lp = jax.vmap(total)(theta + eps, starts)
    ln = jax.vmap(total)(theta - eps, starts)
    g = jnp.mean((lp - ln)[:, None] * eps, axis=0) / (2 * sigma**2)
    return g, {"loss": 0.5 * jnp.mean(lp + ln)}


def full_loss(
    task,
    theta: jax.Array,
    key: jax.Array,
    *,
    num_tasks: int,
    horizon: int,
    particle_sharding: jax.sharding.Sharding | None = None,
):
    """Mean full-horizon meta-loss at ``theta`` over ``num_tasks`` fresh problems."""
    keys = _shard(jax.random.split(key, num_tasks), particle_sharding)
    starts = _shard(_fresh(task, theta, keys, particle_sharding), particle_sharding)

    def total(s):
        return jnp.sum(task.unroll(theta, s, horizon, s)[1])

    return jnp.mean(jax.vmap(total)(starts))
