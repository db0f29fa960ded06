r"""Task distributions and truncated unrolls of a learned optimizer on them.

A :class:`TruncatedTask` couples a distribution of problems with a learned-optimizer network
whose meta-parameters are a flat vector ``theta``. Two task families:

* ``family = "functions"`` (default): the test functions of :mod:`optimus.functions` with
  random dimension, shift, rotation and scale; the start is uniform in the box;
* ``family = "physics"``: windows of the physics-based motion reconstruction
  (:mod:`optimus.physics.task`) with a random number of keyframes; the start is
  :math:`z_0 = 0`. Needs the ``physics`` extra.

Problems live in box-normalised coordinates :math:`z \in [-1, 1]^n` (the coordinates in which
:func:`optimus.minimize` runs learned methods when given ``bounds``), padded to a fixed size
with a mask, so one compiled unroll serves every dimension.

Per-step meta-loss (scale free, so functions of very different magnitudes weigh alike):

.. math:: \ell_t = \frac{1}{T}\,\mathrm{clip}\Big(\log_{10}
          \frac{f(z_t) - f^\star + \epsilon f_0}{f_0 + \epsilon f_0}, \ell_{\min}, \ell_{\max}\Big)

with :math:`f_0 = f(z_0) - f^\star`, :math:`\epsilon = 10^{-12}`, :math:`T` the inner horizon,
and non-finite values replaced by the penalty :math:`\ell_{\max}`. Summed over a horizon it is
the mean log-improvement over the unroll. With ``meta_loss = "best"`` the best value so far,
:math:`\min_{s \le t} f(z_s)` over the finite evaluations, replaces :math:`f(z_t)`: the
meta-loss of what a user gets back (``minimize`` returns the best iterate), under which an
exploratory step costs an evaluation but is not punished for its value. (``"current"``, the
default, scores every evaluated point, a trial point rejected by step acceptance too.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from optimus import functions as fn
from optimus.optimizers.acceptance import AcceptState
from optimus.optimizers.learned import LearnedState, model_init, model_update

LOSS_MIN = -12.0
LOSS_MAX = 2.0
REL_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The meta-training task distribution."""

    functions: tuple[str, ...] = (
        "sphere",
        "quadratic",
        "rastrigin",
        "levy",
        "ackley",
        "rosenbrock",
        "griewank",
        "dixon_price",
        "powell",
        "perm",
    )
    n_min: int = 2
    n_max: int = 32
    horizon: int = 100
    variants: tuple[str, ...] = ("transformed",)
    log_scale_range: tuple[float, float] = (-3.0, 3.0)
    family: str = "functions"  # "functions" or "physics"
    physics_split: str = "train"  # physics: dataset split of the training windows
    physics_val_split: str = "val"  # physics: split of the validation windows
    physics_ks: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # physics: keyframe counts drawn
    meta_loss: str = "current"  # "current": f at every evaluated point; "best": best so far

    def __post_init__(self):
        object.__setattr__(self, "functions", tuple(self.functions))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "log_scale_range", tuple(self.log_scale_range))
        object.__setattr__(self, "physics_ks", tuple(self.physics_ks))
        if self.meta_loss not in ("current", "best"):
            raise ValueError(f"tasks.meta_loss must be 'current' or 'best', got {self.meta_loss!r}")
        if self.family not in ("functions", "physics"):
            raise ValueError(f"tasks.family must be 'functions' or 'physics', got {self.family!r}")
        if self.family == "physics":
            for k in self.physics_ks:
                if not 2 <= k <= 8:
                    raise ValueError(f"tasks.physics_ks: K must be in [2, 8], got {k}")
            if not self.physics_ks:
                raise ValueError("tasks.physics_ks must not be empty")
        if not self.functions:
            raise ValueError("tasks.functions must not be empty")
        for name in self.functions:
            fn.get(name)  # raises a clear ValueError for unknown names
        if not self.variants:
            raise ValueError("tasks.variants must not be empty")
        for v in self.variants:
            if v not in fn.VARIANTS:
                raise ValueError(f"tasks.variants: unknown variant {v!r}; valid: {fn.VARIANTS}")
        if len(self.log_scale_range) != 2 or not (
            self.log_scale_range[0] <= self.log_scale_range[1]
        ):
            raise ValueError(
                f"tasks.log_scale_range must be [low, high] with low <= high, got "
                f"{list(self.log_scale_range)}"
            )
        if not 1 <= self.n_min <= self.n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got {self.n_min}, {self.n_max}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


class InnerState(eqx.Module):
    """One particle: a problem, the optimizer's state on it, and the steps left."""

    problem: Any  # fn.Problem, or a physics WindowProblem
    opt: LearnedState | AcceptState  # AcceptState when the network is ``monotone``
    remaining: jax.Array  # inner steps left on this problem
    f0: jax.Array
    fbest: jax.Array  # best finite objective value so far on this problem (inf before any)


class TruncatedTask(eqx.Module):
    """A learned optimizer (network skeleton + ``unravel``) on a task distribution."""

    static: eqx.Module = eqx.field(static=True)  # non-array part of the network
    unravel: object = eqx.field(static=True)  # flat theta -> array part of the network
    config: TaskConfig = eqx.field(static=True)
    bank: Any = None  # physics family: the WindowBank the problems are drawn from
    frozen: Any = None  # arrays of the network that are not meta-trained (make_task)

    def net(self, theta: jax.Array):
        parts = (
            (self.unravel(theta),) if self.frozen is None else (self.unravel(theta), self.frozen)
        )
        return eqx.combine(*parts, self.static)

    def sample_problem(self, key: jax.Array):
        c = self.config
        if c.family == "physics":
            return self.bank.sample(key)
        return fn.sample_problem(
            key,
            names=c.functions,
            n_min=c.n_min,
            n_max=c.n_max,
            pad_to=c.n_max,
            variants=c.variants,
            log_scale_range=c.log_scale_range,
        )

    def init(self, theta: jax.Array, key: jax.Array, stagger: bool) -> InnerState:
        """A fresh problem and optimizer state; with ``stagger`` the first problem gets a
        random number of remaining steps, so that particles do not reset in lockstep."""
        kp, kx, kr = jax.random.split(key, 3)
        problem = self.sample_problem(kp)
        mask = problem.mask
        if self.config.family == "physics":  # hold the start pose
            z0 = jnp.zeros(mask.shape, jnp.float32)
        else:
            z0 = jax.random.uniform(kx, mask.shape, minval=-1.0, maxval=1.0)
            z0 = jnp.where(mask, z0, 0.0)
        T = self.config.horizon
        remaining = jax.random.randint(kr, (), 1, T + 1) if stagger else jnp.asarray(T)
        return InnerState(
            problem=problem,
            opt=model_init(self.net(theta), z0, mask),
            remaining=remaining.astype(jnp.int32),
            f0=jnp.zeros((), z0.dtype),
            fbest=jnp.full((), jnp.inf, z0.dtype),
        )

    def objective(self, problem):
        """The problem's objective in box-normalised coordinates, as a function of ``z``."""
        if self.config.family == "physics":
            return lambda z: self.bank.objective(problem, z)
        return problem.unit_objective

    def for_validation(self) -> TruncatedTask:
        """The task whose problems validation draws: the physics family's validation split,
        the same distribution for the test functions."""
        if self.config.family != "physics":
            return self
        from optimus.physics.task import window_bank

        c = self.config
        return eqx.tree_at(lambda t: t.bank, self, window_bank(c.physics_val_split, c.physics_ks))

    def step_loss(self, f: jax.Array, f0: jax.Array) -> jax.Array:
        rel = (f + REL_EPS * f0) / (f0 + REL_EPS * f0 + jnp.finfo(f.dtype).tiny)
        loss = jnp.log10(jnp.maximum(rel, jnp.finfo(f.dtype).tiny))
        loss = jnp.where(jnp.isfinite(loss), jnp.clip(loss, LOSS_MIN, LOSS_MAX), LOSS_MAX)
        return loss / self.config.horizon

    def unroll(self, theta: jax.Array, state: InnerState, num_steps: int, next_state: InnerState):
        """Advance ``num_steps`` inner steps. When the problem's horizon ends, the particle
        continues on ``next_state`` (at most one reset per call: ``num_steps <= horizon``).
        Returns ``(state, losses (K,), seg (K,) bool, fresh bool)``: ``seg`` marks steps on a
        problem started inside this call, ``fresh`` that the final state's problem started
        inside this call or at its very end (then it has run no step yet)."""
        net = self.net(theta)

        def body(carry, _):
            s, seg = carry
            objective = self.objective(s.problem)
            f, g = jax.value_and_grad(objective)(s.opt.x)
            f0 = jnp.where(s.opt.t == 0, f, s.f0)
            prev = jnp.where(s.opt.t == 0, jnp.inf, s.fbest)
            fbest = jnp.where(jnp.isfinite(f), jnp.minimum(prev, f), prev)
            loss = self.step_loss(fbest if self.config.meta_loss == "best" else f, f0)
            if isinstance(s.opt, AcceptState):  # the acceptance layer rejects non-finite points
                opt = model_update(net, s.opt, f, g)
            else:
                g = jnp.where(jnp.isfinite(g), g, 0.0)
                opt = model_update(net, s.opt, jnp.where(jnp.isfinite(f), f, f0), g)
            s = InnerState(
                problem=s.problem, opt=opt, remaining=s.remaining - 1, f0=f0, fbest=fbest
            )
            done = s.remaining <= 0
            s = jax.tree.map(lambda a, b: jnp.where(done, b, a), s, next_state)
            return (s, seg | done), (loss, seg)

        (state, fresh), (losses, seg) = jax.lax.scan(
            body, (state, jnp.asarray(False)), None, length=num_steps
        )
        return state, losses, seg, fresh


def make_task(
    net, config: TaskConfig, trainable: tuple[str, ...] = ()
) -> tuple[TruncatedTask, jax.Array]:
    """Split ``net`` into a flat meta-parameter vector ``theta`` and a :class:`TruncatedTask`.

    ``trainable`` names top-level parts of the network (e.g. ``("glob_head",)``, the global
    step / gate / damping head of Optimus) whose arrays form ``theta``; the other arrays are
    frozen at their values in ``net``. Empty: every array is meta-trained."""
    from jax.flatten_util import ravel_pytree

    arrays, static = eqx.partition(net, eqx.is_array)
    spec = jax.tree.map(lambda _: not trainable, arrays)
    for name in trainable:
        part = getattr(arrays, name, None)
        if not jax.tree.leaves(part):
            names = [
                f
                for f in getattr(type(net), "__dataclass_fields__", {})
                if jax.tree.leaves(getattr(arrays, f, None))
            ]
            raise ValueError(
                f"outer.trainable: the network has no part {name!r} with parameters; parts: {names}"
            )
        spec = eqx.tree_at(
            lambda t, name=name: getattr(t, name), spec, jax.tree.map(lambda _: True, part)
        )
    arrays, frozen = eqx.partition(arrays, spec)
    frozen = frozen if trainable else None
    theta, unravel = ravel_pytree(arrays)
    bank = None
    if config.family == "physics":
        from optimus.physics.task import window_bank

        bank = window_bank(config.physics_split, config.physics_ks)
    task = TruncatedTask(static=static, unravel=unravel, config=config, bank=bank, frozen=frozen)
    return task, theta
