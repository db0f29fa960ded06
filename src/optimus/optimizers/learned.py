r"""Learned optimizers: a network plus meta-parameters turned into an :class:`Optimizer`.

One iteration, given :math:`f_t = f(x_t)` and :math:`g_t = \nabla f(x_t)`:

1. update the accumulators and the secant memory and build features
   (:mod:`optimus.nets.features`): the secant pair :math:`s = x_t - x_{t-1}`,
   :math:`y = g_t - g_{t-1}`, :math:`B_t y` and the quasi-Newton direction
   :math:`q = H_t g_t`: by the L-BFGS two-loop recursion over the last few secant pairs
   (``NetConfig.secant = "lbfgs"``, :math:`O(n)`), or from a dense BFGS inverse-Hessian
   estimate kept in the state and updated with every accepted pair (``"bfgs"``,
   :func:`optimus.nets.features.bfgs_inverse_update`, :math:`O(n^2)`; the untrained network
   is then BFGS with unit steps, and inside the acceptance layer BFGS with backtracking);
2. run the network: direction :math:`d`, log-magnitudes :math:`\mu`, global log step
   :math:`\sigma`, rank-one vector :math:`u`, damping :math:`\rho`;
3. preconditioner (Optimus only): :math:`B_{t+1} = \rho B_t + (1-\rho) I + u u^\top`;
4. step: :math:`x_{t+1} = x_t - B_{t+1} (a \odot d + \lambda q)` with
   :math:`a = \exp(c_1\mu + \sigma)\,\ell` and the quasi-Newton gate
   :math:`\lambda \in (0, 2)`; :math:`\ell` is the RMS length of the Barzilai–Borwein step
   (:func:`optimus.nets.features.reference_length`), so the Adam-like term is a learned
   fraction of a secant step length and vanishes as the iterate converges. With
   ``NetConfig.step_scale = "box"``, :math:`\ell = 1` (one box half-width) instead, and
   :math:`e^{\sigma}` is an absolute step length like Adam's learning rate: for rough
   objectives whose secant pairs carry no curvature (the physics windows), where the BB
   length is noise. The safeguard below keeps using the BB length.

**Probe length** (``NetConfig.probe = p > 0``; ours). The first step is
:math:`x_1 = x_0 - p\, g_0 / \mathrm{rms}(g_0)`, RMS length :math:`p` box half-widths,
instead of the network's own first step, a tiny probe of about :math:`10^{-5}` whose only
job is to produce a secant pair. A long first step gives a secant pair that averages the
curvature over ripples of a smaller scale (the bowl of Ackley, Levy or Griewank rather
than the nearest ripple; it does not find lower basins of Rastrigin), much as scipy's
BFGS starts its first line search with a step of Euclidean length about 1. The acceptance
layer's warm-up accepts it whatever its value, and every later step is the network's.
The shipped function-trained models run with :math:`p = 0.1`, chosen on validation
problems after meta-training without it (``docs/model-cards.md``); without ``bounds`` the
length is in the caller's coordinates, which the learned methods assume to be O(1) anyway.

**SR1 direction** (``NetConfig.sr1``, with ``secant = "bfgs"``; ours). Without a line
search the BFGS estimate learns the low-curvature directions of an ill-conditioned quadratic
slowly (unit steps along :math:`-Hg` stay 1.5–2× too short at :math:`\kappa = 10^4`), where
the symmetric-rank-one estimate :math:`H^{\rm SR1}`
(:func:`optimus.nets.features.sr1_inverse_update`) needs no line search: on a quadratic it
satisfies every secant pair so far and is exact after :math:`n` independent steps. It may be
indefinite and it is poor where the curvature changes along the path (Powell, Rosenbrock's
valley), so both estimates are kept and judged on what they predict: before each accepted
pair :math:`(s, y)` updates them, the errors :math:`e = \|H y - s\|` of both are compared,

.. math:: c_k = \tfrac12\, c_{k-1} + \operatorname{clip}\big(\log(e^{\rm SR1} /
          e^{\rm BFGS}), -5, 5\big),

and :math:`q = H^{\rm SR1} g` replaces :math:`q = H g` (in the features and in the step)
when :math:`c_k < -m` (``NetConfig.sr1_margin``, :math:`m = 2`: SR1 has predicted the recent
pairs several times better), and :math:`g^\top q \ge 10^{-3} \|g\| \|q\|`, a sufficient
descent direction. The margin was chosen on validation seeds among 0, 0.5, 1 and 2
(``bench_results/sr1/``). Twice the :math:`O(n^2)` memory and update cost of BFGS alone. On
in the shipped ``optimus``, applied after meta-training like the probe.

**Restarts** (``NetConfig.restart = r > 0``; ours). When the acceptance layer's
backtracking stalls at floating-point resolution (a converged run with budget left), it
restarts from the best point so far moved by :math:`r` box half-widths along a
pseudo-random ±1 vector, keeping the network's state (:mod:`optimus.optimizers.acceptance`).
The vector is drawn per coordinate index from a counter, so padding does not change it,
but it is not permutation-equivariant. Not learned, and off during meta-training; the
shipped function-trained models run with :math:`r = 0.1`, chosen on validation seeds.

**Safeguard.** The network's step :math:`\Delta = B_{t+1}(a \odot d + \lambda q)` is
rejected when it is non-finite or *wildly growing*, defined as

.. math::
    \mathrm{rms}(\Delta) > \kappa \, r_t, \qquad
    r_t = \max\big(\ell,\ \mathrm{rms}(q),\ \mathrm{rms}(s),\ \mathrm{rms}(x_t - x_0)\big),
    \qquad \kappa = 10^3

(RMS over the valid coordinates; non-finite candidates are ignored in the max): a step a
thousand times longer than the Barzilai–Borwein step, the quasi-Newton step, the previous step
and the whole distance travelled so far. The rejected step is replaced by a safe gradient step
of RMS length :math:`\ell` (1 before any curvature pair, i.e. one box half-width), :math:`\Delta
= \ell\, g / \mathrm{rms}(g)`, :math:`B` is reset to the identity and ``n_fallback`` counts it
(a dense BFGS estimate :math:`H` restarts from scratch). When the safeguard does not trigger the
step is bit-identical to the unguarded one. :func:`optimus.minimize` adds backtracking on top: a
trial point reached by a safeguard step whose objective is non-finite or larger than at the
previous point is retried with the step halved (see :mod:`optimus.solve`). ``SAFEGUARD = False``
(module attribute, read at trace time) disables the check; it exists only to measure the
safeguard's cost.

The functions :func:`learned_init` and :func:`learned_update` take the network explicitly, so
meta-training can ``vmap`` them over perturbed meta-parameters; :func:`learned` closes over a
network to give the plain :class:`Optimizer` interface. A ``mask`` (padding) makes a problem
padded to a size bucket behave exactly like the unpadded one on its valid coordinates.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus.nets import features as F
from optimus.nets.compact import (
    Compact,
    compact_apply,
    compact_bfgs_update,
    compact_init,
    compact_precondition_update,
    compact_reset,
    compact_sr1_update,
    compact_started,
)
from optimus.nets.optimus import MAG_SCALE, precondition_update
from optimus.optimizers.acceptance import AcceptState, accept_init, accept_update
from optimus.optimizers.base import Optimizer
from optimus.optimizers.smoothing import SmoothState, smooth_init, smooth_update

# NetConfig.sr1 (module docstring): SR1's direction replaces BFGS's when the decaying sum
# of log(SR1 prediction error / BFGS prediction error) is below -NetConfig.sr1_margin
SR1_DECAY = 0.5  # weight of the older pairs in that sum
SR1_CLIP = 5.0  # one pair moves the sum by at most this much
SR1_MIN_COS = 1e-3  # smallest cosine between g and the SR1 direction H_sr1 g that is used
SAFEGUARD = True  # read at trace time; False only to measure what the safeguard costs
RESTART_SEED = 0  # NetConfig.restart: the +-1 vectors come from fold_in(PRNGKey(0), counter)
KAPPA = 1e3  # a step longer than KAPPA times the reference length r_t is "wildly growing"


class SR1State(eqx.Module):
    """The SR1 side of the quasi-Newton direction (``NetConfig.sr1``)."""

    H: jax.Array | Compact  # SR1 inverse-Hessian estimate, (N, N) or compact (0: no pair yet)
    score: jax.Array  # decaying sum of log(SR1 error / BFGS error) on the secant pairs


class LearnedState(eqx.Module):
    x: jax.Array  # next point to evaluate
    x0: jax.Array
    x_prev: jax.Array
    g_prev: jax.Array
    f0: jax.Array
    f_prev: jax.Array
    acc: F.Accumulators
    # preconditioner, (N, N) or compact (NetConfig.qn_memory); None when the network does
    # not precondition
    B: jax.Array | Compact | None
    # BFGS inverse Hessian (secant="bfgs"): (N, N), compact, or its two parts with
    # bfgs_h0="rescale"; None otherwise
    H: jax.Array | Compact | F.RescaledBFGS | None
    mask: jax.Array
    t: jax.Array
    nit: jax.Array
    failed: jax.Array
    n_fallback: jax.Array
    sr1: SR1State | None = None  # None unless NetConfig.sr1


def uses_preconditioner(net) -> bool:
    cfg = net.config
    return cfg.kind == "optimus" and cfg.precondition


def uses_dense_bfgs(net) -> bool:
    return getattr(net.config, "secant", "lbfgs") == "bfgs"


def _rescaled(net) -> bool:
    return uses_dense_bfgs(net) and getattr(net.config, "bfgs_h0", "selfscale") == "rescale"


def _memory(net) -> int:
    """``NetConfig.qn_memory``: 0 for dense matrices, else the updates a compact one holds."""
    return int(getattr(net.config, "qn_memory", 0))


def _dense_init(net, n: int, dtype):
    if not uses_dense_bfgs(net):
        return None
    if _rescaled(net):
        return F.bfgs_rescaled_init(n, dtype)
    if _memory(net):
        return compact_init(n, 2 * _memory(net), dtype)
    return jnp.zeros((n, n), dtype)


def _precond_init(net, n: int, dtype):
    if not uses_preconditioner(net):
        return None
    if _memory(net):
        return compact_init(n, _memory(net), dtype, c=1.0)
    return jnp.eye(n, dtype=dtype)


def uses_sr1(net) -> bool:
    return uses_dense_bfgs(net) and bool(getattr(net.config, "sr1", False))


def learned_init(net, x0: jax.Array, mask: jax.Array | None = None) -> LearnedState:
    """Initial state for ``x0`` of shape ``(N,)``; ``mask`` marks valid coordinates."""
    if mask is None:
        mask = jnp.ones(x0.shape, bool)
    dtype = x0.dtype
    zero_f = jnp.zeros((), dtype)
    B = _precond_init(net, x0.shape[0], dtype)
    H = _dense_init(net, x0.shape[0], dtype)
    return LearnedState(
        x=x0,
        x0=x0,
        x_prev=x0,
        g_prev=jnp.zeros_like(x0),
        f0=zero_f,
        f_prev=zero_f,
        acc=F.init_accumulators(x0),
        B=B,
        H=H,
        mask=mask,
        t=jnp.zeros((), jnp.int32),
        nit=jnp.zeros((), jnp.int32),
        failed=jnp.zeros((), bool),
        n_fallback=jnp.zeros((), jnp.int32),
        sr1=_sr1_init(x0.shape[0], dtype, _memory(net)) if uses_sr1(net) else None,
    )


def _sr1_init(n: int, dtype, memory: int = 0) -> SR1State:
    H = compact_init(n, memory, dtype) if memory else jnp.zeros((n, n), dtype)
    return SR1State(H, jnp.zeros((), dtype))


def _dense_apply(H, v: jax.Array) -> jax.Array:
    """``H v`` for a matrix of the state in any of its forms."""
    if isinstance(H, Compact):
        return compact_apply(H, v)
    if isinstance(H, F.RescaledBFGS):
        return F.bfgs_rescaled_direction(H, v)
    return H @ v


def _started(H) -> jax.Array:
    """Whether a secant estimate has its first pair (the dense forms: a non-zero trace)."""
    return compact_started(H) if isinstance(H, Compact) else F.trace(H) != 0


def _sr1_direction(sr1: SR1State, H_bfgs, g, s, y, q, t, margin: float):
    """Score the two estimates on the new pair ``(s, y)``, update the SR1 estimate with it
    and return ``(sr1, q)``: ``q`` becomes the SR1 direction when SR1 has been the better
    predictor by the margin and gives a sufficient descent direction (module docstring).
    ``H_bfgs`` is the BFGS estimate *before* this pair."""
    tiny = jnp.finfo(s.dtype).tiny
    scored = (t > 0) & (jnp.vdot(s, s) > 0) & _started(sr1.H)
    err_sr1 = jnp.sqrt(jnp.sum((_dense_apply(sr1.H, y) - s) ** 2)) + tiny
    err_bfgs = jnp.sqrt(jnp.sum((_dense_apply(H_bfgs, y) - s) ** 2)) + tiny
    d = jnp.clip(jnp.log(err_sr1 / err_bfgs), -SR1_CLIP, SR1_CLIP)
    scored = scored & jnp.isfinite(d) & (err_bfgs > 2 * tiny)
    score = jnp.where(scored, SR1_DECAY * sr1.score + d, sr1.score)
    if isinstance(sr1.H, Compact):
        H = compact_sr1_update(sr1.H, s, y)
    else:
        H = F.sr1_inverse_update(sr1.H, s, y)
    q_sr1 = _dense_apply(H, g)
    # a sufficient descent direction: an SR1 direction at right angles to g (H indefinite
    # along it) would make steps that float32 rounding turns uphill
    gq = jnp.vdot(g, q_sr1)
    descent = gq > SR1_MIN_COS * jnp.sqrt(jnp.vdot(g, g) * jnp.vdot(q_sr1, q_sr1))
    use = (score < -margin) & descent & jnp.all(jnp.isfinite(q_sr1))
    return SR1State(H, score.astype(s.dtype)), jnp.where(use, q_sr1, q)


def learned_update(net, state: LearnedState, value: jax.Array, grad: jax.Array) -> LearnedState:
    """One learned step at ``state.x`` given ``value = f(state.x)``, ``grad = ∇f(state.x)``."""
    mask = state.mask
    x = state.x
    dtype = x.dtype
    value = jnp.asarray(value, dtype)
    g = jnp.where(mask, grad.astype(dtype), 0)
    first = state.t == 0
    f0 = jnp.where(first, value, state.f0)
    f_prev = jnp.where(first, value, state.f_prev)
    g_prev = jnp.where(first, g, state.g_prev)
    s = x - state.x_prev
    y = g - g_prev
    By = y if state.B is None else _dense_apply(state.B, y)
    dx = x - state.x0
    if state.H is None:
        acc = F.update_accumulators(state.acc, g, s, y)
        H_new = None
        q = F.lbfgs_direction(g, acc.S, acc.Y)
    else:
        # the pair memory is read only by the two-loop direction: with a dense H it stays
        # empty instead of being updated for nothing
        acc = F.update_accumulators(state.acc, g)
        if isinstance(state.H, F.RescaledBFGS):
            H_new = F.bfgs_rescaled_update(state.H, s, y)
        elif isinstance(state.H, Compact):
            H_new = compact_bfgs_update(state.H, s, y)
        else:
            H_new = F.bfgs_inverse_update(state.H, s, y)
        q = _dense_apply(H_new, g)
    sr1 = state.sr1
    if sr1 is not None:
        sr1, q = _sr1_direction(sr1, state.H, g, s, y, q, state.t, net.config.sr1_margin)
    feats = F.coordinate_features(g, acc, s, y, By, dx, q, mask)
    glob = F.global_features(state.t, value, f_prev, f0, g, g_prev, s, y, dx, q, mask)
    out = net(feats, glob, mask)
    ell = F.reference_length(g, s, y, mask)
    # the Adam-like term's length unit: the BB length, or the box half-width (step_scale)
    unit = jnp.ones((), dtype) if getattr(net.config, "step_scale", "bb") == "box" else ell
    a = jnp.exp(jnp.clip(MAG_SCALE * out.mu + out.sigma, -30.0, 10.0)) * unit
    raw = (a * out.d + out.lam * q).astype(dtype)
    if state.B is None:
        B_new = None
        step = raw
    else:
        u, rho = out.u.astype(dtype), out.rho.astype(dtype)
        if isinstance(state.B, Compact):
            B_new = compact_precondition_update(state.B, u, rho)
        else:
            B_new = precondition_update(state.B, u, rho)
        step = _dense_apply(B_new, raw)
    probe = getattr(net.config, "probe", 0.0)
    if probe > 0:  # a first step of RMS length `probe` along -g instead of the network's
        g_rms = jnp.maximum(_rms(g, mask), jnp.finfo(dtype).tiny)
        step = jnp.where(first, (probe / g_rms) * g, step)
    step = jnp.where(mask, step, 0)
    if SAFEGUARD:
        step, B_new, H_new, fallback = _safeguard(step, B_new, H_new, g, s, dx, q, ell, mask)
        if sr1 is not None:  # restarts from scratch with the BFGS estimate
            if isinstance(sr1.H, Compact):
                score = jnp.where(fallback, jnp.zeros_like(sr1.score), sr1.score)
                sr1 = SR1State(compact_reset(sr1.H, 0.0, fallback), score)
            else:
                fresh = _sr1_init(x.shape[0], dtype)
                sr1 = jax.tree.map(lambda a, b: jnp.where(fallback, a, b), fresh, sr1)
    else:
        fallback = jnp.zeros((), bool)
    return LearnedState(
        x=x - step,
        x0=state.x0,
        x_prev=x,
        g_prev=g,
        f0=f0,
        f_prev=value,
        acc=acc,
        B=B_new,
        H=H_new,
        mask=mask,
        t=state.t + 1,
        nit=state.nit + 1,
        failed=state.failed,
        n_fallback=state.n_fallback + fallback.astype(jnp.int32),
        sr1=sr1,
    )


def _rms(v: jax.Array, mask: jax.Array) -> jax.Array:
    """RMS over the valid coordinates, scaled by the peak so that squaring cannot overflow."""
    n = jnp.maximum(jnp.sum(mask), 1).astype(v.dtype)
    v = jnp.where(mask, v, 0)
    peak = jnp.max(jnp.abs(v))
    safe_peak = jnp.where(peak > 0, peak, 1)
    return peak * jnp.sqrt(jnp.sum((v / safe_peak) ** 2) / n)


def _safeguard(step, B, H, g, s, dx, q, ell, mask):
    """Replace a non-finite or wildly growing step by a safe gradient step (module docstring);
    returns ``(step, B, H, fallback)``."""
    dtype = step.dtype
    cands = jnp.stack([ell.astype(dtype), _rms(q, mask), _rms(s, mask), _rms(dx, mask)])
    ref = jnp.max(jnp.where(jnp.isfinite(cands), cands, 0))
    size = _rms(step, mask)
    fallback = ~jnp.all(jnp.isfinite(step)) | (size > KAPPA * ref)
    length = jnp.where(jnp.isfinite(ell) & (ell > 0), ell, 1).astype(dtype)
    g_rms = _rms(g, mask)
    tiny = jnp.finfo(dtype).tiny
    safe = jnp.where(mask & (g_rms > tiny), g * (length / jnp.maximum(g_rms, tiny)), 0)
    safe = jnp.where(jnp.isfinite(safe), safe, 0)
    step = jnp.where(fallback, safe, step)
    if isinstance(B, Compact):
        B = compact_reset(B, 1.0, fallback)
    elif B is not None:
        B = jnp.where(fallback, jnp.eye(B.shape[0], dtype=dtype), B)
    if isinstance(H, Compact):
        H = compact_reset(H, 0.0, fallback)
    elif isinstance(H, F.RescaledBFGS):
        fresh = F.bfgs_rescaled_init(H.A.shape[0], dtype)
        H = jax.tree.map(lambda a, b: jnp.where(fallback, a, b), fresh, H)
    elif H is not None:
        H = jnp.where(fallback, jnp.zeros_like(H), H)
    return step, B, H, fallback


def model_init(
    net, x0: jax.Array, mask: jax.Array | None = None
) -> LearnedState | AcceptState | SmoothState:
    """Initial state of the learned optimizer as the model defines it: wrapped in the
    step-acceptance layer (:mod:`optimus.optimizers.acceptance`) when
    ``net.config.monotone``, the bare :class:`LearnedState` otherwise; both wrapped in the
    smoothing layer (:mod:`optimus.optimizers.smoothing`) when
    ``net.config.smooth_rounds > 0``."""
    inner = _local_init(net, x0, mask)
    if getattr(net.config, "smooth_rounds", 0) > 0:
        return smooth_init(inner)
    return inner


def _local_init(net, x0, mask):
    inner = learned_init(net, x0, mask)
    if not getattr(net.config, "monotone", False):
        return inner
    return accept_init(
        inner, getattr(net.config, "accept_window", 1), getattr(net.config, "restart", 0.0) > 0
    )


def model_update(
    net, state: LearnedState | AcceptState | SmoothState, value: jax.Array, grad: jax.Array
):
    """One step of the learned optimizer as the model defines it (see :func:`model_init`)."""
    if isinstance(state, SmoothState):
        c = net.config
        inner = state.inner
        mask = inner.inner.mask if isinstance(inner, AcceptState) else inner.mask
        return smooth_update(
            lambda s, v, g: _local_update(net, s, v, g),
            lambda x: _local_init(net, x, mask),
            state,
            value,
            grad,
            mask,
            rounds=c.smooth_rounds,
            samples=c.smooth_samples,
            rho=c.smooth_rho,
            decay=c.smooth_decay,
            step=c.smooth_step,
            max_step=c.smooth_max_step,
            min_cos=c.smooth_cos,
            min_trap=c.smooth_trap,
            min_dim=c.smooth_min_dim,
        )
    return _local_update(net, state, value, grad)


def _local_update(net, state, value, grad):
    if isinstance(state, AcceptState):
        return accept_update(
            lambda s, v, g: learned_update(net, s, v, g),
            state,
            value,
            grad,
            memory=getattr(net.config, "step_memory", False),
            interpolate=getattr(net.config, "backtrack", "halve") == "interp",
            restart=_restart_point(net),
            patience=getattr(net.config, "restart_patience", 0),
        )
    return learned_update(net, state, value, grad)


def _restart_point(net):
    """``NetConfig.restart``: the restart point ``x_home + restart * xi`` of the acceptance
    layer (``xi`` a pseudo-random ±1 vector drawn from the layer's counter; padding stays
    where it is), or None when restarts are off."""
    hop = float(getattr(net.config, "restart", 0.0))
    if hop <= 0:
        return None

    def restart_point(inner, x_home, count):
        key = jax.random.fold_in(jax.random.PRNGKey(RESTART_SEED), count)
        # one draw per coordinate index, so that padding does not change the valid ones
        index = jnp.arange(x_home.shape[0])
        xi = jax.vmap(lambda i: jax.random.rademacher(jax.random.fold_in(key, i), ()))(index)
        moved = x_home + hop * xi.astype(x_home.dtype)
        return jnp.where(inner.mask, moved, x_home).astype(x_home.dtype)

    return restart_point


def learned(net, name: str = "optimus") -> Optimizer:
    """Wrap a network (with its meta-parameters) as a reverse-communication Optimizer."""

    def init(x0: jax.Array, key: jax.Array | None = None) -> LearnedState | AcceptState:
        del key
        return model_init(net, x0)

    def update(state, value: jax.Array, grad: jax.Array):
        return model_update(net, state, value, grad)

    # B as it is held: a Compact becomes a LinearOperator in optimus.solve.finalize
    hess_inv = (lambda s: s.B) if uses_preconditioner(net) else None
    return Optimizer(name=name, init=init, update=update, hess_inv=hess_inv)
