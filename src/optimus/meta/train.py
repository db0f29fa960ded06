"""The outer loop of meta-training: typed config, PES/ES estimates, Adam, logging,
checkpoints and exact resume.

Layers (as in learned_optimization): the learned optimizer (:mod:`optimus.nets`,
:mod:`optimus.optimizers.learned`) / the task family and truncated unroll
(:mod:`optimus.meta.tasks`) / the gradient estimator (:mod:`optimus.meta.pes`) / the outer
learner (this module).

Determinism: the key of outer step ``k`` is ``fold_in(key(seed), k)``, and a checkpoint holds
everything else the next step depends on (meta-parameters, outer optimizer state, every PES
particle's problem, optimizer state and perturbation accumulator, counters), so a run resumed
from a checkpoint continues exactly as the uninterrupted run would have.

Devices and hosts (:mod:`optimus.meta.distributed`): with ``distributed.devices = N`` the
particle axis is sharded over ``N`` devices, possibly of several processes, and the
meta-parameters and outer optimizer state are replicated. Only process 0 touches the file
system (log, checkpoints, exported weights); it reads a checkpoint on resume and broadcasts it.
Checkpoints hold full (unsharded) arrays and their fingerprint does not depend on the device
count, so a run checkpointed on ``N`` devices resumes on any ``M`` that divides the number of
pairs, continuing the same computation up to float rounding of the cross-device mean (exactly,
for ``M = N``). The default ``N = 1`` runs the unsharded program.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimus.meta import checkpoint as ckpt
from optimus.meta import distributed as dist
from optimus.meta.distributed import DistributedConfig, DistributedError
from optimus.meta.pes import (
    PESState,
    es_estimate,
    full_loss,
    pes_estimate,
    pes_init,
    tbptt_estimate,
)
from optimus.meta.tasks import TaskConfig, TruncatedTask, make_task
from optimus.nets import NetConfig, build_net, with_config
from optimus.nets.optimus import RULE_FIELDS  # update-rule fields a fine-tune may change
from optimus.serialization import save_params


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    # "pes" (truncated, persistent), "es" (full unrolls) or "tbptt" (truncated backprop
    # through the unroll, persistent particles, one per pair; sigma unused)
    kind: str = "pes"
    num_pairs: int = 64
    truncation: int = 20
    sigma: float = 0.01

    def __post_init__(self):
        if self.kind not in ("pes", "es", "tbptt"):
            raise ValueError(f"estimator.kind must be 'pes', 'es' or 'tbptt', got {self.kind!r}")
        if self.num_pairs < 1 or self.truncation < 1 or not self.sigma > 0:
            raise ValueError("estimator: num_pairs, truncation >= 1 and sigma > 0 required")

    @property
    def persistent(self) -> bool:
        """Whether the estimator keeps particles that advance by truncations."""
        return self.kind in ("pes", "tbptt")


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    steps: int = 2000
    learning_rate: float = 3e-4
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of the learning rate
    warmup_steps: int = 50
    clip_norm: float = 1.0
    seed: int = 0
    # start from these meta-parameters instead of a random network (a fine-tune): the name
    # of a shipped model or the path of a .npz written by save_params; "" = random init
    init_from: str = ""
    # meta-train only these top-level parts of the network (e.g. ["glob_head"]: Optimus'
    # global step, gate and damping head, 216 parameters); empty = all parameters
    trainable: tuple[str, ...] = ()
    # with init_from, re-initialise the bias of Optimus' global head: the global log step
    # sigma (exp(sigma) in units of the model's step_scale) and the quasi-Newton gate logit
    # (lam = 2 sigmoid(logit)); unset = keep the trained value
    init_log_step: float | None = None
    init_gate_logit: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.steps < 1 or not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError("outer: steps >= 1, learning_rate > 0 and clip_norm > 0 required")
        if not self.final_lr_fraction >= 0 or self.warmup_steps < 0:
            raise ValueError(
                "outer: final_lr_fraction >= 0 and warmup_steps >= 0 required, got "
                f"{self.final_lr_fraction} and {self.warmup_steps}"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"outer.seed must be in [0, 2**32), got {self.seed}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    checkpoint_every: int = 100
    eval_every: int = 100
    eval_tasks: int = 64
    eval_seed: int = 12345
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit

    def __post_init__(self):
        if self.checkpoint_every < 1 or self.eval_every < 1 or self.eval_tasks < 1:
            raise ValueError("run: checkpoint_every, eval_every and eval_tasks must be >= 1")
        if not 0 <= self.eval_seed < 2**32:
            raise ValueError(f"run.eval_seed must be in [0, 2**32), got {self.eval_seed}")
        if not self.max_minutes >= 0:
            raise ValueError(f"run.max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "optimus"
    model: NetConfig = dataclasses.field(default_factory=NetConfig)
    tasks: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    estimator: EstimatorConfig = dataclasses.field(default_factory=EstimatorConfig)
    outer: OuterConfig = dataclasses.field(default_factory=OuterConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) or self.name == "config":
            raise ValueError(
                f"name {self.name!r}: use letters, digits, '.', '_' and '-' only, and not "
                "'config' (it names the exported files NAME.npz and NAME.json, beside the run's "
                "config.json)"
            )
        if self.model.smooth_rounds > 0:
            raise ValueError(
                "model.smooth_rounds must be 0 in meta-training: the smoothing phase "
                "(optimus.optimizers.smoothing) restarts the optimizer inside an unroll and is "
                "applied to trained weights afterwards (scripts/rule_variants.py)"
            )
        if self.estimator.persistent and self.estimator.truncation > self.tasks.horizon:
            raise ValueError(
                f"estimator.truncation ({self.estimator.truncation}) must not exceed "
                f"tasks.horizon ({self.tasks.horizon})"
            )

    def to_dict(self) -> dict:
        """Everything, including how this launch is spread over devices and processes."""
        return dataclasses.asdict(self)

    def training_dict(self) -> dict:
        """What determines the computation: every section except ``[distributed]``. Stored in
        checkpoints, ``config.json`` and model cards, and compared on resume, so a run can
        resume on another number of devices or hosts."""
        d = self.to_dict()
        d.pop("distributed")
        return d


_SECTIONS = {
    "model": NetConfig,
    "tasks": TaskConfig,
    "estimator": EstimatorConfig,
    "outer": OuterConfig,
    "run": RunConfig,
    "distributed": DistributedConfig,
}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is types.UnionType:  # "T | None": None (JSON null) or a T
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(typ) if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(typ)
        inner = args[0]
        return tuple(_coerce(v, inner, where) for v in value)
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)  # 100.0 (TOML float, JSON) is 100; parsed exactly, not via float
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return out
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {typ}")


def _build_section(cls, values: dict, section: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) in [{section}]: {unknown}; valid keys: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(data: dict) -> TrainConfig:
    data = dict(data)
    unknown = sorted(set(data) - set(_SECTIONS) - {"name"})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid: {sorted(_SECTIONS)}")
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = _coerce(data["name"], str, "name")
    for section, cls in _SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"[{section}] must be a table")
        kwargs[section] = _build_section(cls, values, section)
    return TrainConfig(**kwargs)


def _with_defaults(stored: Any) -> Any:
    """A checkpoint's stored training config with the defaults of fields added since it was
    written filled in (as :meth:`TrainConfig.training_dict` writes it now), so that adding a
    config field does not make older runs unresumable; ``stored`` unchanged when it does not
    parse (the comparison then fails as before)."""
    try:
        cfg = config_from_dict(stored)
    except (ValueError, TypeError, AttributeError):
        return stored
    return json.loads(json.dumps(cfg.training_dict(), sort_keys=True))


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML config and apply ``section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        lhs, value = item.split("=", 1)
        parts = lhs.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            data["name"] = value
            continue
        if len(parts) != 2:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        section, key = parts
        if section not in _SECTIONS:
            raise ValueError(f"--set: unknown section {section!r}; valid: {sorted(_SECTIONS)}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        data.setdefault(section, {})[key] = parsed
    return config_from_dict(data)


# ---------------------------------------------------------------------------------------------


def lr_schedule(cfg: OuterConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=min(cfg.warmup_steps, max(cfg.steps - 1, 0)),
        decay_steps=max(cfg.steps, 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction,
    )


class TrainState(eqx.Module):
    theta: jax.Array
    opt_state: Any
    pes: PESState | None
    step: jax.Array
    n_skipped: jax.Array
    best_val: jax.Array
    best_theta: jax.Array


def make_outer_optimizer(cfg: OuterConfig) -> optax.GradientTransformation:
    """Adam on the clipped meta-gradient, with warm-up and cosine learning-rate decay."""
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(lr_schedule(cfg)))


class Trainer:
    """Builds the task, estimator and outer optimizer for a :class:`TrainConfig`.

    With ``config.distributed.devices`` other than 1 (and after :func:`dist.initialize` for
    several processes) the particles are sharded over a device mesh; :meth:`place` puts a host
    state onto it. Raises :class:`DistributedError` before any compilation if the devices do
    not exist or the particle count does not divide by them."""

    def __init__(self, config: TrainConfig):
        self.config = config
        est = config.estimator
        self.mesh = dist.make_mesh(config.distributed.devices, est.num_pairs)
        mesh = self.mesh
        part = dist.particle_sharding(mesh) if mesh is not None else None
        self.particle_sharding = part
        root = jax.random.key(config.outer.seed)
        self.root_key = root
        net = build_net(config.model, jax.random.fold_in(root, 1_000_003))
        if config.outer.init_from:
            o = config.outer
            net = initial_net(o.init_from, net, o.init_log_step, o.init_gate_logit)
        self.task, theta0 = make_task(net, config.tasks, config.outer.trainable)
        self.theta0 = theta0
        self.tx = make_outer_optimizer(config.outer)
        task: TruncatedTask = self.task

        def outer_step(state: TrainState) -> tuple[TrainState, dict]:
            key = jax.random.fold_in(root, state.step)
            if est.persistent:
                estimate = (
                    tbptt_estimate
                    if est.kind == "tbptt"
                    else functools.partial(pes_estimate, sigma=est.sigma)
                )
                g, pes, metrics = estimate(
                    task,
                    state.theta,
                    state.pes,
                    key,
                    truncation=est.truncation,
                    particle_sharding=part,
                )
            else:
                g, metrics = es_estimate(
                    task,
                    state.theta,
                    key,
                    sigma=est.sigma,
                    num_pairs=est.num_pairs,
                    horizon=config.tasks.horizon,
                    particle_sharding=part,
                )
                pes = state.pes
            finite = jnp.all(jnp.isfinite(g))
            g = jnp.where(finite, g, 0.0)
            updates, opt_state = self.tx.update(g, state.opt_state, state.theta)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(finite, a, b), new, old
            )
            new = TrainState(
                theta=keep(state.theta + updates, state.theta),
                opt_state=keep(opt_state, state.opt_state),
                pes=pes,
                step=state.step + 1,
                n_skipped=state.n_skipped + (~finite).astype(jnp.int32),
                best_val=state.best_val,
                best_theta=state.best_theta,
            )
            metrics = dict(metrics, grad_norm=optax.tree.norm(g), skipped=~finite)
            return new, metrics

        val_key = jax.random.key(config.run.eval_seed)
        n_dev = 1 if mesh is None else mesh.size
        # validation problems are sharded too when their number divides by the device count
        val_part = part if config.run.eval_tasks % n_dev == 0 else None

        val_task = task.for_validation()

        def validate(theta):
            return full_loss(
                val_task,
                theta,
                val_key,
                num_tasks=config.run.eval_tasks,
                horizon=config.tasks.horizon,
                particle_sharding=val_part,
            )

        if mesh is None:
            self.outer_step = jax.jit(outer_step)
            self.validate = jax.jit(validate)
        else:
            rep = dist.replicated(mesh)
            self.outer_step = jax.jit(outer_step, out_shardings=(self._shardings(rep, part), rep))
            self.validate = jax.jit(validate, out_shardings=rep)

    def _shardings(self, rep, part) -> TrainState:
        """Sharding prefix tree of a :class:`TrainState`: particles split, the rest replicated."""
        pes = part if self.config.estimator.persistent else None
        return TrainState(
            theta=rep,
            opt_state=rep,
            pes=pes,
            step=rep,
            n_skipped=rep,
            best_val=rep,
            best_theta=rep,
        )

    def init_state(self) -> TrainState:
        """The initial state, on the mesh when there is one (identical on every process)."""
        return self.place(self.host_init_state())

    def host_init_state(self) -> TrainState:
        """The initial state on this process's default device."""
        cfg = self.config
        pes = None
        if cfg.estimator.persistent:
            pes = pes_init(
                self.task,
                self.theta0,
                jax.random.fold_in(self.root_key, 2_000_003),
                cfg.estimator.num_pairs,
            )
        return TrainState(
            theta=self.theta0,
            opt_state=self.tx.init(self.theta0),
            pes=pes,
            step=jnp.zeros((), jnp.int32),
            n_skipped=jnp.zeros((), jnp.int32),
            best_val=jnp.asarray(jnp.inf, self.theta0.dtype),
            best_theta=self.theta0,
        )

    def place(self, state: TrainState) -> TrainState:
        """Put a host (or single-device) state onto the device mesh: particle-batched leaves
        split over the mesh, the rest replicated. Identity without a mesh. With several
        processes, process 0's values are used everywhere."""
        if self.mesh is None:
            return state
        host = dist.broadcast_from_main(dist.to_host(state))
        prefix = self._shardings(dist.replicated(self.mesh), self.particle_sharding)
        shardings = jax.tree.map(
            lambda sh, sub: jax.tree.map(lambda _: sh, sub),
            prefix,
            host,
            is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
        )
        return dist.to_global(host, shardings)

    def net(self, theta: jax.Array):
        return self.task.net(theta)

    def inner_steps_per_outer(self) -> int:
        est = self.config.estimator
        k = est.truncation if est.persistent else self.config.tasks.horizon
        return (1 if est.kind == "tbptt" else 2) * est.num_pairs * k

    def devices(self) -> str:
        """The devices that run the particles, e.g. ``"4 × cpu"``."""
        return dist.describe(self.mesh)


def initial_net(source: str, like, log_step: float | None = None, gate_logit: float | None = None):
    """The network to fine-tune: the shipped model named ``source``, or the parameter file
    at that path. Its architecture must be the config's ``[model]`` (``like``) up to the
    update-rule fields :data:`RULE_FIELDS`, which are taken from ``like``. ``log_step`` and
    ``gate_logit`` (unless None) overwrite the biases of the global head's sigma and gate
    outputs (``OuterConfig.init_log_step`` / ``init_gate_logit``)."""
    from optimus.pretrained import available, load_pretrained
    from optimus.serialization import load_params

    if source in available():
        net = load_pretrained(source)
    elif Path(source).is_file():
        net, _ = load_params(source)
    else:
        raise ValueError(
            f"outer.init_from: {source!r} is neither a shipped model ({', '.join(available())}) "
            "nor an existing parameter file"
        )
    want, got = dataclasses.asdict(like.config), dataclasses.asdict(net.config)
    diff = {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
    if set(diff) - set(RULE_FIELDS):
        raise ValueError(
            f"outer.init_from: {source!r} has another architecture than [model]; differing "
            f"fields (config, init_from): {diff}"
        )
    if diff:  # same parameters, the config's update rule
        net = with_config(net, like.config)
    for index, value, name in ((0, log_step, "init_log_step"), (3, gate_logit, "init_gate_logit")):
        if value is None:
            continue
        if not hasattr(net, "glob_head"):
            raise ValueError(f"outer.{name} needs an Optimus network (kind = 'optimus')")
        bias = net.glob_head.bias.at[index].set(value)
        net = eqx.tree_at(lambda m: m.glob_head.bias, net, bias)
    return net


def init_fingerprint(source: str) -> str | None:
    """sha256 of the parameter file a fine-tune starts from (``outer.init_from``: a shipped
    model's file or a path), stored in every checkpoint: the parameters a run does not train
    are read from that file again on resume, so it must not have changed. None without one."""
    if not source:
        return None
    from importlib import resources

    from optimus.pretrained import available

    try:
        if source in available():
            data = resources.files("optimus.pretrained").joinpath(f"{source}.npz").read_bytes()
        else:
            data = Path(source).read_bytes()
        return hashlib.sha256(data).hexdigest()
    except OSError:
        return None  # initial_net reports a missing file


#: configuration keys that may differ between a run and its resumption (they do not change the
#: computation)
RESUMABLE_CHANGES = ("name", "run.max_minutes", "run.checkpoint_every")


def config_difference(stored: Any, current: dict) -> str:
    """The keys in which a checkpoint's stored training config differs from ``current``,
    as ``"section.key: stored -> current"`` items (empty when they agree, ignoring
    :data:`RESUMABLE_CHANGES`)."""
    if not isinstance(stored, dict):
        return "no readable configuration stored"

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(stored), flat(current)
    keys = sorted((set(a) | set(b)) - set(RESUMABLE_CHANGES))
    diff = [
        f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}"
        for k in keys
        if a.get(k) != b.get(k)
    ]
    return "; ".join(diff)


_TRAINERS: dict[str, Trainer] = {}


def _trainer_for(config: TrainConfig) -> Trainer:
    """A :class:`Trainer` for ``config``, reused across :func:`train` calls in one process
    (resuming, or moving a run between device counts, then does not re-trace and recompile
    the outer step). Holds the two most recent ones."""
    key = json.dumps(
        [config.training_dict(), config.distributed.devices, jax.process_count()], sort_keys=True
    )
    if key not in _TRAINERS:
        while len(_TRAINERS) >= 2:
            _TRAINERS.pop(next(iter(_TRAINERS)))
        _TRAINERS[key] = Trainer(config)
    return _TRAINERS[key]


LOG_FIELDS = ["step", "loss", "grad_norm", "skipped", "val_loss", "lr", "wall_s", "inner_steps_s"]


def _git_commit() -> str:
    """Short commit of the code, with ``-dirty`` when tracked files have uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log rows up to ``step`` (rows after the checkpoint are redone on resume)."""
    if not path.exists():
        return
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        for r in rows:
            if int(r["step"]) <= step:
                w.writerow(r)


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    tensorboard: bool = False,
) -> Path:
    """Run (or resume) meta-training; returns the path of the exported best parameters.

    ``out`` receives ``config.json``, ``log.csv`` (one row per outer step),
    ``checkpoints/`` and, at the end, ``NAME.npz``/``NAME.json`` (the meta-parameters with the
    best validation loss) and ``NAME-last.npz``. ``stop_after`` stops after that many outer
    steps of this invocation (used by tests and time-boxed sessions). ``tensorboard``: also
    write the log's metrics as TensorBoard scalars (``meta/loss``, ``meta/val_loss``, ...) into
    ``out/tensorboard/`` (:mod:`optimus.meta.tensorboard`; a new event file per invocation).

    With several processes (``config.distributed``), every process calls this with the same
    configuration; it joins the process group, checks that all processes agree on the
    configuration, ``resume`` and ``stop_after``, and only process 0 writes under ``out``.
    """
    from tqdm import tqdm

    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    dcfg = dist.initialize(config.distributed)
    launch = dataclasses.asdict(dcfg)
    launch.pop("process_id")
    dist.agree(
        {"config": config.training_dict(), "launch": launch, "resume": resume, "stop": stop_after}
    )
    main = dist.is_main()
    if dist.multi_process():
        print(
            f"optimus: process {dcfg.process_id} of {dcfg.num_processes} joined; if a process "
            "is lost the others stop, and the run continues from its last checkpoint when every "
            "process is restarted with --resume",
            file=sys.stderr,
            flush=True,
        )
    out = Path(out)
    ckdir = out / "checkpoints"
    cfg_json = json.dumps(config.training_dict(), indent=2, sort_keys=True)
    train_cfg = json.loads(cfg_json)  # as stored in checkpoints (JSON lists, not tuples)
    # only a fine-tune of a subset (outer.trainable) re-reads parameters from its starting file
    init_sha = init_fingerprint(config.outer.init_from) if config.outer.trainable else None

    def prepare_folder():
        if not resume and ckdir.exists() and ckpt.latest_checkpoint(ckdir) is not None:
            raise ValueError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"output folder {out} is not writable: {e}") from None

    dist.on_main(prepare_folder, error=ValueError)

    trainer = _trainer_for(config)
    host_state = trainer.host_init_state()
    wall_before = 0.0
    log_path = out / "log.csv"

    def load():
        last = ckpt.latest_checkpoint(ckdir) if ckdir.exists() else None
        if last is None:
            raise ValueError(f"--resume: no checkpoint found in {ckdir}")
        try:
            info = json.loads((last / "meta.json").read_text())
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"checkpoint {last}: unreadable meta.json ({type(e).__name__}: {e}); to resume "
                "from the previous checkpoint, delete that folder and write the previous "
                f"folder's name into {ckdir / 'latest'}"
            ) from None
        diff = config_difference(_with_defaults(info.get("config")), train_cfg)
        if diff:
            raise ckpt.CheckpointError(
                f"checkpoint {last} was written with a different configuration ({diff}); "
                f"resume with the run's own config ({out / 'config.json'}); only "
                f"{', '.join(RESUMABLE_CHANGES)} may change on resume"
            )
        stored_init = info.get("init_from_sha256")
        if stored_init is not None and stored_init != init_sha:
            raise ckpt.CheckpointError(
                f"checkpoint {last}: outer.init_from {config.outer.init_from!r} has changed since "
                f"the run started (sha256 {stored_init[:12]}... then, {str(init_sha)[:12]}... "
                "now); the frozen meta-parameters come from that file, so the run cannot "
                "continue exactly; restore the original file or start a new run"
            )
        state, info = ckpt.load_checkpoint(last, host_state)
        _truncate_log(log_path, int(state.step))
        return state, float(info.get("wall_s", 0.0))

    def start_log():
        (out / "config.json").write_text(cfg_json)
        with log_path.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=LOG_FIELDS).writeheader()

    if resume:
        loaded = dist.on_main(load, error=ValueError)
        if dist.multi_process():
            template = dist.to_host(host_state)
            restored, wall = loaded if main else (template, 0.0)
            restored, wall = dist.broadcast_from_main((restored, np.asarray(wall)))
            loaded = restored, float(wall)
        host_state, wall_before = loaded
    else:
        dist.on_main(start_log, error=ValueError)
    state = trainer.place(host_state)

    total = config.outer.steps
    start_step = int(state.step)
    t_start = time.time()
    lr_fn = lr_schedule(config.outer)
    per_step = trainer.inner_steps_per_outer()
    devices = trainer.devices()

    def save(st):
        host = st if trainer.mesh is None else dist.to_host(st)  # a collective on many hosts
        wall = wall_before + time.time() - t_start
        dist.on_main(
            lambda: ckpt.save_checkpoint(
                ckdir,
                int(host.step),
                host,
                config=train_cfg,
                wall_s=wall,
                devices=devices,
                init_from_sha256=init_sha,
            ),
            error=ckpt.CheckpointError,
        )

    bar = tqdm(
        total=total,
        initial=start_step,
        disable=not (progress and main),
        desc=config.name,
        unit="step",
    )
    done_here = 0
    fh = log_path.open("a", newline="") if main else None
    tb = None
    try:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS) if fh is not None else None
        if tensorboard and main:
            from optimus.meta.tensorboard import EventWriter

            tb = EventWriter(out / "tensorboard", resume_step=start_step + 1 if resume else None)
        if start_step == 0 and config.outer.init_from:
            # a fine-tune validates its starting point (log row 0), so the exported best
            # meta-parameters are never worse on validation than the network it started from
            v = trainer.validate(state.theta)
            if math.isfinite(float(v)):
                state = eqx.tree_at(lambda s: (s.best_val, s.best_theta), state, (v, state.theta))
            if writer is not None:
                writer.writerow(
                    {
                        "step": 0,
                        "val_loss": f"{float(v):.6g}",
                        "lr": "0",
                        "wall_s": f"{time.time() - t_start:.2f}",
                    }
                )
                fh.flush()
            if tb is not None:
                tb.scalars(0, {"meta/val_loss": float(v)})
        while int(state.step) < total:
            t0 = time.time()
            try:
                state, metrics = trainer.outer_step(state)
                step = int(state.step)
                val = float("nan")
                if step % config.run.eval_every == 0 or step == total:
                    v = trainer.validate(state.theta)
                    val = float(v)
                    if math.isfinite(val) and val < float(state.best_val):
                        state = eqx.tree_at(
                            lambda s: (s.best_val, s.best_theta), state, (v, state.theta)
                        )
                loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
                skipped = int(metrics["skipped"])
            except Exception as e:
                if not dist.multi_process():
                    raise
                raise _lost(e, int(start_step + done_here + 1), ckdir) from e
            dt = time.time() - t0
            row = {
                "step": step,
                "loss": f"{loss:.6g}",
                "grad_norm": f"{grad_norm:.6g}",
                "skipped": skipped,
                "val_loss": "" if math.isnan(val) else f"{val:.6g}",
                # the outer optimizer's count does not advance on a skipped step
                "lr": f"{float(lr_fn(step - 1 - (int(state.n_skipped) - skipped))):.3g}",
                "wall_s": f"{wall_before + time.time() - t_start:.2f}",
                "inner_steps_s": f"{per_step / max(dt, 1e-9):.0f}",
            }
            if writer is not None:
                writer.writerow(row)
                fh.flush()
            if tb is not None:
                tb.scalars(
                    step,
                    {
                        "meta/loss": loss,
                        "meta/val_loss": val,
                        "meta/grad_norm": grad_norm,
                        "meta/skipped": skipped,
                        "outer/learning_rate": float(row["lr"]),
                        "throughput/inner_steps_per_s": float(row["inner_steps_s"]),
                    },
                )
            bar.update(1)
            bar.set_postfix(
                loss=row["loss"], val=row["val_loss"] or "-", steps_s=row["inner_steps_s"]
            )
            done_here += 1
            out_of_time = (
                config.run.max_minutes > 0
                and (time.time() - t_start) / 60 >= config.run.max_minutes
            )
            if config.run.max_minutes > 0 and dist.multi_process():
                # process 0's clock decides, so that all processes stop at the same step
                out_of_time = bool(dist.broadcast_from_main(np.asarray(out_of_time)))
            stop = out_of_time or (stop_after is not None and done_here >= stop_after)
            if step % config.run.checkpoint_every == 0 or step == total or stop:
                try:
                    save(state)
                except (ckpt.CheckpointError, DistributedError):
                    raise
                except Exception as e:
                    if not dist.multi_process():
                        raise
                    raise _lost(e, step, ckdir) from e
            if stop:
                break
    finally:
        if fh is not None:
            fh.close()
        if tb is not None:
            tb.close()
    bar.close()
    if dist.multi_process():
        # the replicas of theta on different hosts must be identical; checked once at the end
        final = np.ascontiguousarray(dist.to_host(state.theta))
        dist.agree(hashlib.sha256(final.tobytes()).hexdigest(), "final meta-parameters")
    return export(trainer, state, out, wall_before + time.time() - t_start)


def _lost(error: Exception, step: int, ckdir: Path) -> DistributedError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return DistributedError(
        f"outer step {step} failed on a multi-process run, most likely because another process "
        f"was lost ({type(error).__name__}: {first}); the last checkpoint in {ckdir} is "
        "intact: restart every process with --resume (any device count that divides the "
        "number of pairs)"
    )


def export(trainer: Trainer, state: TrainState, out: Path, wall_s: float) -> Path:
    """Write the best-validation and the last meta-parameters with a model card (process 0
    only; every process takes part in gathering the values)."""
    cfg = trainer.config
    state = state if trainer.mesh is None else dist.to_host(state)
    best = state.best_theta if bool(jnp.isfinite(state.best_val)) else state.theta
    card = {
        "name": cfg.name,
        "train_config": cfg.training_dict(),
        "task_distribution": dataclasses.asdict(cfg.tasks),
        "estimator": dataclasses.asdict(cfg.estimator),
        "outer_steps": int(state.step),
        "inner_steps": int(state.step) * trainer.inner_steps_per_outer(),
        "skipped_steps": int(state.n_skipped),
        "best_val_loss": float(state.best_val),
        "wall_time_s": round(wall_s, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}, "
        f"jax {jax.__version__} ({jax.default_backend()})",
        "devices": trainer.devices(),
        "commit": _git_commit(),
    }
    path = out / f"{cfg.name}.npz"

    def write():
        save_params(path, trainer.net(best), **card)
        save_params(out / f"{cfg.name}-last.npz", trainer.net(state.theta), **dict(card, last=True))

    dist.on_main(write, error=ValueError)
    return path
