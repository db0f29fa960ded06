r"""The Optimus network: a Transformer over coordinate tokens that predicts a step and rank-one
updates of a preconditioner.

Given per-coordinate features :math:`\phi_t \in \mathbb{R}^{n\times F}` and global features
:math:`\gamma_t \in \mathbb{R}^G` (see :mod:`optimus.nets.features`), tokens
:math:`h^{(0)}_i = W_e [\phi_{t,i}; \gamma_t]` pass through ``depth`` encoder layers
(:mod:`optimus.nets.encoder`), giving :math:`h_i`. Then

* rank-one branch: :math:`u_i = w_u^\top h_i \cdot e^{\kappa} / \sqrt{n}` with a global log
  scale :math:`\kappa` and a damping :math:`\rho = \mathrm{sigmoid}(\cdot) \in (0, 1)`, both from
  the mean-pooled tokens; the preconditioner follows the damped rank-one update
  :math:`B_{t+1} = \rho B_t + (1 - \rho) I + u u^\top`, :math:`B_0 = I`, so every eigenvalue
  of :math:`B` stays :math:`\ge 1` (symmetric positive definite by construction, in any
  floating-point precision; the overall step length is set by :math:`\sigma`);
* step branch: a per-coordinate MLP on :math:`[\phi_{t,i}; \gamma_t; h_i]` gives a direction
  :math:`d_i` (plus a linear skip initialised to the Adam direction
  :math:`m^{(0.9)} / \sqrt{v^{(0.999)}}`) and a log-magnitude :math:`\mu_i`; a global log step
  length :math:`\sigma` comes from the pooled tokens. The step size is
  :math:`a_i = \exp(c_1 \mu_i + \sigma)\,\ell` with :math:`\ell` the Barzilai–Borwein
  step length (1 before the first gradient change);
* quasi-Newton gate (ours): a global :math:`\lambda = 2\,\mathrm{sigmoid}(\cdot) \in (0, 2)`
  from the pooled tokens weighs the quasi-Newton step :math:`q = H_t g_t` of the features
  (L-BFGS, or a dense BFGS estimate with ``secant="bfgs"``; with ``sr1=True`` the direction
  of a dense SR1 estimate replaces it while that predicts the secant pairs clearly better),
  so the network can take (damped) quasi-Newton steps where they pay;
* update (in :mod:`optimus.optimizers.learned`):
  :math:`x_{t+1} = x_t - B_{t+1} (a \odot d + \lambda q)`.

With ``precondition=False`` the rank-one branch is unused and :math:`B = I` (the ablation
``optimus-noprecond``). Every layer acts per token, so one network serves any dimension.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optimus.nets.encoder import Dense, Encoder
from optimus.nets.features import N_COORD_FEATURES, N_GLOBAL_FEATURES, masked_mean

ADAM_CHANNEL = 5  # m(0.9) * rsqrt(r): the Adam direction, see features.coordinate_features
MAG_SCALE = 0.1  # c1 in a = exp(c1 * mu + sigma)
# Initialisation of the step branch. Ablation on the validation set of configs/optimus.toml
# (mean log10 improvement over 100 steps, untrained network): with an absolute step scale,
# Adam-like steps of RMS 0.03 and lam ~ 0.54: -1.87; lam = 1 and Adam-like RMS 1e-3: -3.13,
# 1e-4: -3.54, 1e-5: -4.09. With the Adam-like term relative to the Barzilai-Borwein length
# (features.reference_length) and lam = 1: exp(sigma) = 0.3: -3.35, 0.1: -3.86, 0.01: -4.06,
# 1e-5: -4.36. The network starts as an L-BFGS-like method without line search, bootstrapped
# by a tiny first step, and meta-training learns where to depart from it. With step acceptance
# (NetConfig.monotone) the untrained network scores -5.07 at 1e-5 and -5.03 at 1e-2, and
# 1,500 PES steps from 1e-2 peaked at -5.14 (from 1e-5: -5.36), so 1e-5 stays.
# Initial Adam-like step, in units of the BB length (numpy: importing must not start JAX).
INIT_LOG_STEP = float(np.log(np.float32(1e-5)))
INIT_LAM = 0.0  # initial quasi-Newton gate logit: lam = 2 sigmoid(0) = 1


# NetConfig fields that change how the network's outputs are used, not its parameters (the
# update rule around the network): weights trained with one value run with another, a
# fine-tune may change them, and optimus.minimize takes them as options of learned methods
RULE_FIELDS = (
    "monotone",
    "step_memory",
    "backtrack",
    "step_scale",
    "accept_window",
    "bfgs_h0",
    "probe",
    "sr1",
    "sr1_margin",
    "restart",
    "restart_patience",
    "smooth_rounds",
    "smooth_samples",
    "smooth_rho",
    "smooth_decay",
    "smooth_step",
    "smooth_max_step",
    "smooth_cos",
    "smooth_trap",
    "smooth_min_dim",
    "qn_memory",
)


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Architecture of a learned optimizer network (serialised with the weights)."""

    kind: str = "optimus"  # "optimus" or "mlp"
    width: int = 32
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: int = 2
    hidden: int = 32
    precondition: bool = True
    # step acceptance with backtracking (optimus.optimizers.acceptance); False: the paper's
    # rule of moving to every proposed point. Part of the model: a network trained with it
    # is run with it.
    monotone: bool = False
    # with monotone: remember the backtracking across steps (acceptance "step memory")
    step_memory: bool = False
    # with monotone: how a rejected trial point is pulled back to the best point, "halve"
    # (beta = 1/2) or "interp" (minimiser of the quadratic through f_b, g_b'p and f)
    backtrack: str = "halve"
    # with monotone: judge a trial point against the largest of the last accept_window
    # accepted values (1: the last one, a monotone rule; > 1: non-monotone acceptance)
    accept_window: int = 1
    # token mixing of the encoder (optimus.nets.encoder): "full" self-attention, O(n^2), or
    # "induced" attention through num_inducing learned tokens, O(n)
    attention: str = "full"
    num_inducing: int = 16
    # where the quasi-Newton direction q = H g comes from (optimus.optimizers.learned):
    # "lbfgs" - two-loop recursion over the last features.LBFGS_MEMORY secant pairs, O(n);
    # "bfgs" - a dense BFGS inverse-Hessian estimate H kept in the state, O(n^2)
    secant: str = "lbfgs"
    # with secant = "bfgs": the initial matrix of the dense estimate. "selfscale" - gamma_1 I
    # from the first pair, then all of H rescaled by the asymmetric self-scaling of
    # features.bfgs_inverse_update; "rescale" - H = A + gamma_k C with gamma_k of the latest
    # pair, as L-BFGS rescales H0 at every step, with unlimited memory
    # (features.bfgs_rescaled_update; twice the O(n^2) memory and update cost)
    bfgs_h0: str = "selfscale"
    # reference length of the Adam-like step term (optimus.optimizers.learned): "bb" - the
    # Barzilai-Borwein step length (features.reference_length); "box" - 1, the half-width
    # of the box, so exp(sigma) is an absolute step as Adam's learning rate is (for rough
    # objectives whose secant pairs carry no curvature, e.g. the physics windows)
    step_scale: str = "bb"
    # length of the first step (RMS, in box half-widths) along -g; 0: the network's own
    # first step (a tiny probe). A long first step gives a secant pair that averages over
    # small-scale ripples (optimus.optimizers.learned)
    probe: float = 0.0
    # with secant = "bfgs": also keep a dense SR1 estimate and take its direction instead of
    # BFGS's while it predicts the secant pairs clearly better (optimus.optimizers.learned);
    # SR1 needs no line search to learn a quadratic exactly
    sr1: bool = False
    # with sr1: how much better (decaying sum of log error ratios) SR1 must have predicted
    # the secant pairs before its direction is taken; 2 was chosen on validation seeds
    sr1_margin: float = 2.0
    # with monotone: when backtracking has stalled at floating-point resolution (the
    # pulled-back trial point is within a few ulps of the best point), restart from the
    # best point so far moved by restart * xi, xi a deterministic pseudo-random +-1 vector
    # (RMS length `restart` box half-widths), accepted whatever its value; 0: off
    # (optimus.optimizers.acceptance). Spends the evaluations that a converged run would
    # waste on another basin
    restart: float = 0.0
    # with restart > 0: also restart when the accepted values have not decreased by more
    # than a few ulps (acceptance.STALL_REL_ULPS, relative) for this many evaluations
    # and the trial point is rejected; 0: only the ulp test above
    restart_patience: int = 0
    # a Gaussian-smoothing phase for rough objectives (optimus.optimizers.smoothing): when
    # the first two gradients disagree (cosine < smooth_cos), the trapezoid rule misses the
    # change of the value by more than smooth_trap (relative) and n >= smooth_min_dim,
    # smooth_rounds rounds of smooth_samples evaluations at antithetic Gaussian perturbations
    # of RMS smooth_rho * smooth_decay^r box half-widths move a centre by (Barzilai-Borwein)
    # steps along their mean gradient, the first of RMS length smooth_step, none longer than
    # smooth_max_step; then the optimizer starts afresh at the best point seen. 0 rounds: off
    smooth_rounds: int = 0
    smooth_samples: int = 10
    smooth_rho: float = 0.2
    smooth_decay: float = 0.5
    smooth_step: float = 0.3
    smooth_max_step: float = 2.0
    smooth_cos: float = 0.5
    smooth_trap: float = 0.05
    smooth_min_dim: int = 8
    # how the n x n matrices of the state (the preconditioner B, the dense BFGS and SR1
    # estimates) are held: 0 - dense; m > 0 - in compact form c I + P^T M P with room for m
    # updates (optimus.nets.compact), O(m n) instead of O(n^2) per step and equal in exact
    # arithmetic while at most m steps are taken (then the BFGS and SR1 estimates freeze and
    # B is only damped). Not part of
    # the trained model: optimus.minimize sets it from the budget where it is cheaper
    # (optimus.solve.COMPACT_MIN_RATIO)
    qn_memory: int = 0

    def __post_init__(self):
        if self.kind not in ("optimus", "mlp"):
            raise ValueError(f"unknown network kind {self.kind!r}; expected 'optimus' or 'mlp'")
        if self.attention not in ("full", "induced"):
            raise ValueError(f"unknown attention {self.attention!r}; expected 'full' or 'induced'")
        if self.backtrack not in ("halve", "interp"):
            raise ValueError(f"unknown backtrack {self.backtrack!r}; expected 'halve' or 'interp'")
        if self.secant not in ("lbfgs", "bfgs"):
            raise ValueError(f"unknown secant {self.secant!r}; expected 'lbfgs' or 'bfgs'")
        if self.bfgs_h0 not in ("selfscale", "rescale"):
            raise ValueError(f"unknown bfgs_h0 {self.bfgs_h0!r}; expected 'selfscale' or 'rescale'")
        if self.step_scale not in ("bb", "box"):
            raise ValueError(f"unknown step_scale {self.step_scale!r}; expected 'bb' or 'box'")
        if self.accept_window < 1:
            raise ValueError(f"NetConfig.accept_window must be >= 1, got {self.accept_window}")
        if not (math.isfinite(self.probe) and self.probe >= 0):
            raise ValueError(f"NetConfig.probe must be a finite number >= 0, got {self.probe}")
        if not (math.isfinite(self.sr1_margin) and self.sr1_margin >= 0):
            raise ValueError(
                f"NetConfig.sr1_margin must be a finite number >= 0, got {self.sr1_margin}"
            )
        if not (math.isfinite(self.restart) and self.restart >= 0):
            raise ValueError(f"NetConfig.restart must be a finite number >= 0, got {self.restart}")
        patience = self.restart_patience
        is_int = isinstance(patience, int | np.integer) and not isinstance(
            patience, bool | np.bool_
        )
        if not is_int or patience < 0:
            raise ValueError(
                f"NetConfig.restart_patience must be an integer >= 0, got {patience!r}"
            )
        object.__setattr__(self, "restart_patience", int(patience))  # a plain int in the JSON
        for name, low in (
            ("smooth_rounds", 0),
            ("smooth_samples", 2),
            ("smooth_min_dim", 1),
            ("qn_memory", 0),
        ):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool | np.bool_) or v < low:
                raise ValueError(f"NetConfig.{name} must be an integer >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.smooth_samples % 2:
            raise ValueError(
                "NetConfig.smooth_samples must be even (antithetic pairs), "
                f"got {self.smooth_samples}"
            )
        for name in ("smooth_rho", "smooth_step", "smooth_max_step"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"NetConfig.{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.smooth_decay) and 0 < self.smooth_decay <= 1):
            raise ValueError(f"NetConfig.smooth_decay must be in (0, 1], got {self.smooth_decay}")
        if not (math.isfinite(self.smooth_cos) and -1 <= self.smooth_cos <= 1):
            raise ValueError(f"NetConfig.smooth_cos must be in [-1, 1], got {self.smooth_cos}")
        if not (math.isfinite(self.smooth_trap) and self.smooth_trap >= 0):
            raise ValueError(
                f"NetConfig.smooth_trap must be a finite number >= 0, got {self.smooth_trap}"
            )
        if self.qn_memory and self.secant == "bfgs" and self.bfgs_h0 == "rescale":
            raise ValueError(
                "NetConfig.qn_memory > 0 (compact matrices) needs bfgs_h0 = 'selfscale'; "
                "the 'rescale' estimate is dense only"
            )
        if self.sr1 and self.secant != "bfgs":
            raise ValueError("NetConfig.sr1 needs secant = 'bfgs' (a dense estimate)")
        if self.num_inducing < 1:
            raise ValueError(f"NetConfig.num_inducing must be >= 1, got {self.num_inducing}")
        for name in ("width", "num_heads", "mlp_ratio", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"NetConfig.depth must be >= 0, got {self.depth}")


class NetOutput(eqx.Module):
    """Raw predictions for one step: direction ``d``, log-magnitudes ``mu`` (both ``(N,)``),
    global log step ``sigma``, rank-one vector ``u`` ``(N,)``, damping ``rho`` and the
    quasi-Newton gate ``lam``."""

    d: jax.Array
    mu: jax.Array
    sigma: jax.Array
    u: jax.Array
    rho: jax.Array
    lam: jax.Array


class StepHead(eqx.Module):
    """Per-coordinate MLP giving ``(d, mu)``, with a linear skip from the features to ``d``."""

    fc1: Dense
    fc2: Dense
    out: Dense
    skip: Dense

    def __init__(self, d_in: int, hidden: int, *, key: jax.Array):
        k1, k2, k3 = jax.random.split(key, 3)
        self.fc1 = Dense(d_in, hidden, key=k1)
        self.fc2 = Dense(hidden, hidden, key=k2)
        self.out = Dense(hidden, 2, key=k3, scale=0.01)
        w = jnp.zeros((N_COORD_FEATURES, 1)).at[ADAM_CHANNEL, 0].set(1.0)
        self.skip = Dense(N_COORD_FEATURES, 1, key=k3)
        self.skip = eqx.tree_at(lambda m: m.weight, self.skip, w)

    def __call__(self, inp: jax.Array, coord_feats: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jax.nn.gelu(self.fc1(inp))
        h = jax.nn.gelu(self.fc2(h))
        o = self.out(h)
        d = o[:, 0] + self.skip(coord_feats)[:, 0]
        return d, o[:, 1]


class OptimusNet(eqx.Module):
    """Transformer learned optimizer (see the module docstring)."""

    embed: Dense
    encoder: Encoder
    u_head: Dense
    glob_head: Dense
    step: StepHead
    config: NetConfig = eqx.field(static=True)

    def __init__(self, config: NetConfig, *, key: jax.Array):
        ke, kenc, ku, kg, ks = jax.random.split(key, 5)
        d_in = N_COORD_FEATURES + N_GLOBAL_FEATURES
        w = config.width
        self.embed = Dense(d_in, w, key=ke)
        self.encoder = Encoder(
            w,
            config.depth,
            config.num_heads,
            config.mlp_ratio,
            key=kenc,
            attention=config.attention,
            num_inducing=config.num_inducing,
        )
        self.u_head = Dense(w, 1, key=ku)
        # global head: [sigma, log u scale, rho logit, lam logit] from pooled tokens + globals
        self.glob_head = Dense(w + N_GLOBAL_FEATURES, 4, key=kg, scale=0.01)
        self.glob_head = eqx.tree_at(
            lambda m: m.bias, self.glob_head, jnp.asarray([INIT_LOG_STEP, -3.0, 4.0, INIT_LAM])
        )
        self.step = StepHead(d_in + w, config.hidden, key=ks)
        self.config = config

    def __call__(self, feats: jax.Array, glob: jax.Array, mask: jax.Array) -> NetOutput:
        n_tok = feats.shape[0]
        gb = jnp.broadcast_to(glob, (n_tok, glob.shape[0]))
        inp = jnp.concatenate([feats, gb], axis=1)
        h = self.encoder(self.embed(inp), mask)
        pooled = masked_mean(h, mask)
        sigma, log_u, rho_logit, lam_logit = self.glob_head(jnp.concatenate([pooled, glob]))
        n = jnp.maximum(jnp.sum(mask), 1).astype(feats.dtype)
        u = self.u_head(h)[:, 0] * jnp.exp(log_u) / jnp.sqrt(n)
        d, mu = self.step(jnp.concatenate([inp, h], axis=1), feats)
        zero = jnp.zeros((), feats.dtype)
        return NetOutput(
            d=jnp.where(mask, d, 0),
            mu=jnp.where(mask, mu, 0),
            sigma=sigma,
            u=jnp.where(mask, u, 0),
            rho=jax.nn.sigmoid(rho_logit) + zero,
            lam=2 * jax.nn.sigmoid(lam_logit) + zero,
        )


def precondition_update(B: jax.Array, u: jax.Array, rho: jax.Array) -> jax.Array:
    r"""Damped rank-one update :math:`B \leftarrow \rho B + (1-\rho) I + u u^\top`.

    For :math:`\rho \in [0, 1]` and symmetric :math:`B \succeq I` the result is symmetric with
    :math:`z^\top B' z = \rho z^\top B z + (1-\rho)\|z\|^2 + (u^\top z)^2 \ge \|z\|^2`, so
    :math:`B \succeq I` (hence positive definite) holds through any number of updates. Every
    term is symmetric entry by entry (:math:`u_i u_j = u_j u_i` exactly in floating point), so
    a symmetric :math:`B` stays exactly symmetric without an explicit symmetrisation (a
    transpose that costs a memory pass over :math:`n^2` entries at large :math:`n`).
    """
    eye = jnp.eye(B.shape[0], dtype=B.dtype)
    return rho * B + (1 - rho) * eye + jnp.outer(u, u)
