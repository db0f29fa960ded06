r"""``optimus bench``: the benchmark protocol of the spec (section 5).

Every method minimises the same problems from the same starting points with the same budget of
objective+gradient evaluations (``steps = max_evals = budget``, ``gtol = 0``), all in
box-normalised coordinates :math:`z = (x - c)/h \in [-1, 1]^n` of the problem's box, which is
how the learned methods were meta-trained. The box only scales the problem: no method is
constrained to it (the test functions are defined everywhere and every optimum lies inside the
box). Constraining would handicap the line-search methods, which see a clipped objective under
``minimize(bounds=...)``: measured on quadratic / Rosenbrock at n = 10, L-BFGS reached
10^1.9 / 10^-5.3 boxed versus 10^-4.7 / 10^-17 unconstrained (with the plain clip of the
time, whose zero derivative froze a coordinate at a bound; the clip's derivative now releases
it, see :mod:`optimus.solve`). A method may stop before the
budget (a line search that cannot make progress, a non-finite objective, an exactly zero
gradient): the evaluations it used are recorded and its best value is carried forward in the
curves.

Seeds: evaluation seed ``s`` uses the key ``fold_in(key(0), 1000 + s)``, tuning seed ``s`` the
key ``fold_in(key(0), s)`` (disjoint for s < 1000); each key is split into a problem key
(shift and rotation of the transformed / off-centre variants) and a starting-point key
(``x0 = problem.sample_x0(key)``, uniform in the box). The learning rates of adam / sgd / sgdm
are tuned per (function, variant, dimension) on the tuning seeds only: the grid value with the
lowest mean final log10 objective wins (ties: the smallest learning rate). When that value lies
at an end of its grid, the grid is extended past that end, one grid step at a time (at most
``GRID_EXTENSION`` steps), for as long as the next value scores strictly lower
(:func:`tune_learning_rate`), so a tuned baseline is not capped by the grid's range.

Timing: ``compile_s`` is measured once per (method, dimension) as the first call minus an
immediately repeated identical call; ``wall_s`` is the time of a call whose solve is already
compiled (for the first run of a (method, dimension) pair: the repeated call).
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BenchError",
    "BenchConfig",
    "add_arguments",
    "final_log10",
    "main",
    "resolve_config",
    "run_bench",
]

#: Values at or below this floor (including an exact 0) are reported as log10 = -30.
LOG10_FLOOR = -30.0
#: Perm(0,d,β) is skipped above this dimension. Its values reach ~1e26 at d = 10 and overflow
#: float32 from random starts at d of about 16 (x_j^d with |x| up to d), but its gradient in
#: box coordinates overflows float32 *squared* norms much earlier: the largest starting
#: |gradient| over 10 benchmark seeds is 1.9e15 at d = 6, 5.7e22 at d = 8 and 8.3e30 at d = 10
#: (|g|^2 > 3.4e38). At d = 10 BFGS, L-BFGS and Adam then stopped at the starting point and the
#: learned methods ran on their safeguard's gradient steps only (a review, 2026-11-28), so the
#: cell measured float32 overflow, not optimization; it was dropped (it had been d <= 10).
PERM_MAX_DIM = 6
#: Reference methods run through ``scipy.optimize.minimize`` (host loop, float64, the objective
#: and its gradient one jitted JAX call): the baseline of the wall-time comparison and a
#: cross-check of optimus' own L-BFGS. Not counted among the issue-target baselines.
SCIPY_METHODS = ("scipy-lbfgsb",)
#: Methods whose learning rate is tuned on the tuning seeds.
TUNED_METHODS = ("adam", "sgd", "sgdm")
BASE_SEED = 0
EVAL_SEED_OFFSET = 1000

QUICK_DEFAULTS: dict[str, Any] = dict(
    functions=("sphere", "quadratic", "rosenbrock", "rastrigin", "ackley", "levy"),
    variants=("transformed", "offcentre"),
    dims=(2, 10, 30),
    seeds=3,
    tune_seeds=1,
    out="bench_results/quick",
)
FULL_DEFAULTS: dict[str, Any] = dict(
    functions=None,  # all of optimus.functions.NAMES
    variants=("transformed", "canonical", "offcentre"),
    dims=(2, 10, 30, 100, 300, 1000),
    seeds=10,
    tune_seeds=2,
    out="bench_results/full",
)


def _log_grid(lo_exp: float, hi_exp: float, step: float) -> tuple[float, ...]:
    k = round((hi_exp - lo_exp) / step)
    return tuple(float(f"{10.0 ** (lo_exp + i * step):.3g}") for i in range(k + 1))


#: learning-rate grids (in box-normalised coordinates, where the box is [-1, 1]^n)
LR_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "full": {
        "adam": _log_grid(-4, 0, 0.5),
        "sgd": _log_grid(-8, 0, 0.5),
        "sgdm": _log_grid(-8, 0, 0.5),
    },
    "quick": {
        "adam": _log_grid(-3, 0, 1),
        "sgd": _log_grid(-7, 0, 1),
        "sgdm": _log_grid(-7, 0, 1),
    },
}

#: how many grid steps past either end of its grid the tuning may go when the best value lies
#: at that end (see :func:`tune_learning_rate`)
GRID_EXTENSION = 4


def _extension(grid: tuple[float, ...], upward: bool) -> list[float]:
    """The ``GRID_EXTENSION`` rates past one end of ``grid``, one grid step apart (rounded to 3
    significant digits like the grid), in the order the tuning tries them."""
    ratio = grid[-1] / grid[-2] if upward else grid[0] / grid[1]
    lr, out = (grid[-1] if upward else grid[0]), []
    for _ in range(GRID_EXTENSION):
        lr = float(f"{lr * ratio:.3g}")
        out.append(lr)
    return out


def grid_limits(grid: tuple[float, ...]) -> tuple[float, float]:
    """The smallest and largest learning rate the tuning may reach from ``grid``: the last
    rates of its extensions (a value there is reported as at the edge)."""
    if len(grid) < 2:
        return grid[0], grid[-1]
    return _extension(grid, upward=False)[-1], _extension(grid, upward=True)[-1]


def tune_learning_rate(
    score: Callable[[float], float], grid: tuple[float, ...]
) -> tuple[float, list[tuple[float, float]]]:
    r"""Pick the learning rate with the lowest ``score`` (mean final log10 objective on the
    tuning seeds; ``inf`` when a run had no finite value) from ``grid``, extended past an end.

    Every value of ``grid`` is scored; ties go to the smallest rate. If the best lies at the
    first (last) grid value, rates one grid step further down (up) are scored in turn, at most
    ``GRID_EXTENSION`` of them, as long as each scores strictly lower than the best so far.
    Returns the chosen rate and every ``(rate, score)`` tried, in the order tried.
    """
    if not grid:
        raise ValueError("tune_learning_rate: empty grid")
    tried = [(float(lr), float(score(lr))) for lr in grid]
    scores = [v for _, v in tried]
    if not any(math.isfinite(v) for v in scores):
        return tried[0][0], tried
    k = int(np.argmin(scores))
    best_lr, best = tried[k]
    if len(grid) >= 2 and k in (0, len(grid) - 1):
        for lr in _extension(grid, upward=k > 0):
            value = float(score(lr))
            tried.append((lr, value))
            if not value < best:
                break
            best_lr, best = lr, value
    return best_lr, tried


#: Run times of the default protocol measured on the 2-core development machines (an AMD EPYC
#: and an Intel Xeon, 2026-11-28), quoted in the report.
FULL_RUNTIME_NOTE = (
    "about 11 minutes on 2 cores of an AMD EPYC and 31 minutes on 2 cores of an Intel Xeon @ "
    "2.5 GHz (9 methods, 10 functions x 3 variants x dims 2-1000, 10 evaluation + 2 tuning "
    "seeds; the measured total of a run is in the first line of its report, every method's "
    "wall time per evaluation in its timing table); compilation 5-50 s per (method, "
    "dimension). `--dims 2,10,30,100,300` with two variants takes about 4 min on the AMD EPYC "
    "(12.5 on the Intel Xeon), and with one variant and `--steps 1000` about 6 min (21 on the "
    "Intel Xeon)."
)


class BenchError(Exception):
    """Bad benchmark input (unknown name, bad dimension, unwritable folder, ...)."""


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``optimus bench``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small protocol (6 functions, transformed+offcentre, dims 2,10,30, 3 seeds); "
        "finishes in a few minutes on 2 CPU cores",
    )
    parser.add_argument("--functions", help="comma-separated test functions (default: all)")
    parser.add_argument("--dims", help="comma-separated dimensions (default 2,10,30,100,300,1000)")
    parser.add_argument(
        "--variants", help="comma-separated: canonical, transformed, offcentre (default all)"
    )
    parser.add_argument("--methods", help="comma-separated methods (default: all)")
    parser.add_argument(
        "--steps",
        default="100",
        help="budget of objective+gradient evaluations per run (default 100)",
    )
    parser.add_argument("--seeds", help="number of evaluation seeds (default 10; quick 3)")
    parser.add_argument(
        "--tune-seeds",
        help="number of separate seeds used to tune the learning rates of adam/sgd/sgdm "
        "(default 2; quick 1)",
    )
    parser.add_argument(
        "--params-dir",
        help="folder with learned weights DIR/<method>.npz (+ .json), saved with "
        "optimus.save_params; used instead of the shipped pretrained weights",
    )
    parser.add_argument(
        "--out", help="output folder (default bench_results/full or bench_results/quick)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG figures")


@dataclass(frozen=True)
class BenchConfig:
    functions: tuple[str, ...]
    variants: tuple[str, ...]
    dims: tuple[int, ...]
    methods: tuple[str, ...]
    steps: int
    seeds: int
    tune_seeds: int
    out: Path
    plots: bool = True
    quick: bool = False
    params_dir: Path | None = None
    lr_grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    progress: bool = True


def _split_names(text: str | None, valid: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = [s.strip().lower() for s in str(text).split(",") if s.strip()]
    if not names:
        raise BenchError(f"--{what} is empty")
    for name in names:
        if name not in valid:
            raise BenchError(f"unknown {what[:-1]} {name!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


def _int(text: Any, what: str, minimum: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BenchError(f"{what} must be an integer, got {text!r}") from None
    if value < minimum:
        raise BenchError(f"{what} must be >= {minimum}, got {value}")
    return value


def _check_out(out: Path) -> Path:
    """Create ``out`` and check it is writable (BenchError otherwise)."""
    try:
        if out.exists() and not out.is_dir():
            raise BenchError(f"output path {out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except BenchError:
        raise
    except OSError as e:
        raise BenchError(f"output folder {out} is not writable ({e.strerror or e})") from None
    return out


def resolve_config(args: argparse.Namespace) -> BenchConfig:
    """Validate the command-line options and fill in the defaults (BenchError on bad input)."""
    from optimus import functions as F
    from optimus import methods as all_methods

    quick = bool(getattr(args, "quick", False))
    d = QUICK_DEFAULTS if quick else FULL_DEFAULTS
    functions = _split_names(getattr(args, "functions", None), F.NAMES, "functions")
    if functions is None:
        functions = tuple(d["functions"] or F.NAMES)
    variants = _split_names(getattr(args, "variants", None), F.VARIANTS, "variants") or tuple(
        d["variants"]
    )
    valid_methods = tuple(all_methods()) + SCIPY_METHODS
    methods = _split_names(getattr(args, "methods", None), valid_methods, "methods") or (
        valid_methods
    )
    dims_text = getattr(args, "dims", None)
    if dims_text is None:
        dims = tuple(d["dims"])
    else:
        parts = [s for s in str(dims_text).split(",") if s.strip()]
        if not parts:
            raise BenchError("--dims is empty")
        dims = tuple(sorted({_int(s, "every dimension in --dims", 1) for s in parts}))
    steps = _int(getattr(args, "steps", 100), "--steps", 1)
    seeds_arg = getattr(args, "seeds", None)
    seeds = d["seeds"] if seeds_arg is None else _int(seeds_arg, "--seeds", 1)
    tune_arg = getattr(args, "tune_seeds", None)
    tune_seeds = d["tune_seeds"] if tune_arg is None else _int(tune_arg, "--tune-seeds", 1)
    if seeds > EVAL_SEED_OFFSET or tune_seeds > EVAL_SEED_OFFSET:
        raise BenchError(
            f"at most {EVAL_SEED_OFFSET} seeds (evaluation and tuning seeds must differ)"
        )
    params_dir = getattr(args, "params_dir", None)
    if params_dir is not None:
        params_dir = Path(params_dir)
        if not params_dir.is_dir():
            raise BenchError(f"--params-dir {params_dir} is not a folder")
    out = Path(getattr(args, "out", None) or d["out"])
    _check_out(out)
    return BenchConfig(
        functions=functions,
        variants=variants,
        dims=dims,
        methods=methods,
        steps=steps,
        seeds=seeds,
        tune_seeds=tune_seeds,
        out=out,
        plots=not getattr(args, "no_plots", False),
        quick=quick,
        params_dir=params_dir,
        lr_grids=dict(LR_GRIDS["quick" if quick else "full"]),
        progress=not getattr(args, "no_progress", False),
    )


# ---------------------------------------------------------------------------------------------
# learned weights


def load_learned(config: BenchConfig) -> tuple[dict[str, Any], list[str]]:
    """Networks for the learned methods among ``config.methods``: ``DIR/<method>.npz`` from
    ``--params-dir`` if present, else the shipped pretrained weights; methods with neither
    are skipped (a note says so)."""
    from optimus import pretrained
    from optimus.optimizers import LEARNED_METHODS, load_learned_file

    nets: dict[str, Any] = {}
    notes: list[str] = []
    shipped = pretrained.available()
    for method in config.methods:
        if method not in LEARNED_METHODS:
            continue
        path = None if config.params_dir is None else config.params_dir / f"{method}.npz"
        if path is not None and path.is_file():
            try:
                nets[method] = load_learned_file(path, method)[0]
            except ValueError as e:
                raise BenchError(str(e)) from None
            notes.append(f"{method}: weights from {path}")
        elif method in shipped:
            try:
                nets[method] = pretrained.load_pretrained(method)
            except (OSError, ValueError) as e:
                raise BenchError(f"shipped weights of {method!r} cannot be loaded: {e}") from None
            notes.append(f"{method}: shipped pretrained weights")
        else:
            where = f"no {path} and " if path is not None else ""
            notes.append(
                f"{method}: SKIPPED ({where}no shipped pretrained weights named {method!r})"
            )
    return nets, notes


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Run:
    method: str
    function: str
    variant: str
    dim: int
    seed: int
    best: float
    last: float
    log10_best: float
    iterations: int
    evaluations: int
    wall_s: float
    compile_s: float
    learning_rate: float | None
    status: str
    curve: np.ndarray  # best objective after each evaluation, padded to the budget


@dataclass
class BenchResults:
    config: BenchConfig
    runs: list[Run]
    methods: tuple[str, ...]  # methods actually run
    cells: list[tuple[str, str, int]]  # (function, variant, dim) actually run
    tuned_lr: dict[tuple[str, str, str, int], float]
    tune_scores: dict[tuple[str, str, str, int], list[tuple[float, float]]]
    compile_s: dict[tuple[str, int], float]
    notes: list[str]
    total_s: float = 0.0
    timestamp: str = ""

    def wall_per_eval(self) -> dict[tuple[str, int], float]:
        """Median wall time per objective+gradient evaluation (s) per (method, dimension):
        ``wall_s / evaluations`` over every run of that pair with at least one evaluation."""
        per: dict[tuple[str, int], list[float]] = {}
        for r in self.runs:
            if r.evaluations > 0:
                per.setdefault((r.method, r.dim), []).append(r.wall_s / r.evaluations)
        return {k: float(np.median(v)) for k, v in per.items()}


def log10_floor(value: float) -> float:
    """log10 of an objective value, floored at :data:`LOG10_FLOOR`; NaN if not finite."""
    if not math.isfinite(value):
        return math.nan
    return max(math.log10(value), LOG10_FLOOR) if value > 10.0**LOG10_FLOOR else LOG10_FLOOR


def _pad_curve(curve: np.ndarray, budget: int) -> np.ndarray:
    out = np.full((budget,), np.nan, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)[:budget]
    out[: c.size] = c
    if 0 < c.size < budget:
        out[c.size :] = c[-1]
    return out


def _keys(seed: int, tuning: bool):
    import jax

    base = jax.random.key(BASE_SEED)
    key = jax.random.fold_in(base, seed if tuning else EVAL_SEED_OFFSET + seed)
    k_problem, k_x0 = jax.random.split(key)
    return k_problem, k_x0


def skipped_cells(config: BenchConfig) -> tuple[list[tuple[str, int]], list[str]]:
    """(function, dim) pairs to run, and notes on the ones skipped."""
    from optimus import functions as F

    todo: list[tuple[str, int]] = []
    notes: list[str] = []
    for name in config.functions:
        tf = F.get(name)
        bad_multiple = [n for n in config.dims if n % tf.dim_multiple]
        too_big = [n for n in config.dims if name == "perm" and n > PERM_MAX_DIM]
        if bad_multiple:
            notes.append(
                f"{name}: dimension(s) {', '.join(map(str, bad_multiple))} skipped "
                f"(needs a multiple of {tf.dim_multiple})"
            )
        if too_big:
            notes.append(
                f"{name}: dimension(s) {', '.join(map(str, too_big))} skipped (n/a): the "
                "squared norm of Perm(0,d,β)'s gradient overflows float32 from random starts at "
                f"d >= 8 (|g| up to 8e30 at d = 10); skipped above d = {PERM_MAX_DIM}"
            )
        todo += [(name, n) for n in config.dims if n not in bad_multiple and n not in too_big]
    return todo, notes


class _Runner:
    """Calls ``optimus.minimize`` with the protocol's settings, timing compile and wall time."""

    def __init__(self, config: BenchConfig, nets: dict[str, Any]):
        self.config = config
        self.nets = nets
        self.compile_s: dict[tuple[str, int], float] = {}

    def solve(self, method: str, problem, x0, lr: float | None):
        if method in SCIPY_METHODS:
            budget = self.config.steps
            return self._timed(method, problem, lambda: _scipy_solve(problem, x0, budget))

        kwargs: dict[str, Any] = {}
        if method in self.nets:
            kwargs["params"] = self.nets[method]
        if lr is not None:
            kwargs["options"] = {"learning_rate": float(lr)}
        budget = self.config.steps
        z0 = problem.to_unit(x0)

        def call():
            t0 = time.perf_counter()
            res = _minimize_unit(problem, z0, method, budget, **kwargs)
            return res, time.perf_counter() - t0

        return self._timed(method, problem, call)

    def _timed(self, method: str, problem, call):
        n = int(problem.n)
        key = (method, n)
        res, wall = call()
        if key not in self.compile_s:
            res, wall2 = call()
            self.compile_s[key] = max(wall - wall2, 0.0)
            wall = wall2
        return res, wall, self.compile_s[key]


def _scipy_solve(problem, x0, budget: int):
    """scipy's L-BFGS-B (no bounds, like every method of the protocol) on the box-normalised
    problem with ``budget`` evaluations; returns
    ``(result, wall_s)`` with the fields the runner reads. The objective and gradient are one
    jitted JAX call evaluated in float32 (like every other method) and handed to scipy in
    float64. Evaluations beyond the budget (scipy checks ``maxfun`` once per iteration) are
    not counted: the result is the best of the first ``budget`` evaluations."""
    from types import SimpleNamespace

    import jax.numpy as jnp
    import scipy.optimize

    vg = _scipy_value_and_grad()
    z0 = np.asarray(problem.to_unit(jnp.asarray(x0)), np.float64)
    values: list[float] = []

    def fun(z):
        v, g = vg(problem, jnp.asarray(z, x0.dtype))
        v = float(v)
        values.append(v)
        return v, np.asarray(g, np.float64)

    t0 = time.perf_counter()
    res = scipy.optimize.minimize(
        fun,
        z0,
        jac=True,
        method="L-BFGS-B",
        options=dict(maxfun=budget, maxiter=budget, ftol=0.0, gtol=0.0),
    )
    wall = time.perf_counter() - t0
    vals = np.asarray(values[:budget], np.float64)
    finite = np.where(np.isfinite(vals), vals, np.inf)
    best_curve = np.minimum.accumulate(finite) if vals.size else np.array([np.inf])
    out = SimpleNamespace(
        fun=float(best_curve[-1]),
        last_fun=float(vals[-1]) if vals.size else math.nan,
        nit=int(res.nit),
        nfev=int(vals.size),
        # scipy's codes: 0 converged, 1 iteration/evaluation limit, 2 line search failure
        status=SimpleNamespace(
            name={0: "CONVERGED", 1: "MAX_EVALS"}.get(int(res.status), "LINESEARCH_FAILED")
        ),
        eval_history=best_curve,
    )
    return out, wall


@functools.cache
def _scipy_value_and_grad():
    """One jitted ``value_and_grad`` of ``Problem.unit_objective`` (the problem is an argument,
    so every instance of a (function, dimension) shares one compilation)."""
    import equinox as eqx
    import jax

    return eqx.filter_jit(lambda p, z: jax.value_and_grad(p.unit_objective)(z))


def _problem(name: str, variant: str, n: int, seed: int, tuning: bool):
    from optimus import functions as F

    k_problem, k_x0 = _keys(seed, tuning)
    problem = F.make_problem(name, n, variant=variant, key=k_problem)
    return problem, problem.sample_x0(k_x0)


def final_log10(
    method: str,
    name: str,
    n: int,
    seed: int,
    *,
    params: Any = None,
    variant: str = "transformed",
    budget: int = 100,
) -> float:
    """:func:`log10_floor` of the best objective that ``method`` reaches in ``budget``
    evaluations on evaluation seed ``seed`` of a problem of the protocol (the same problem
    and starting point as the benchmark), unconstrained in box-normalised coordinates. For
    ablation and experiment scripts that compare variants of one method outside the runner
    (no learning-rate tuning, no timing)."""
    problem, x0 = _problem(name, variant, n, seed, tuning=False)
    res = _minimize_unit(problem, problem.to_unit(x0), method, budget, params=params)
    return log10_floor(float(res.fun))


def _minimize_unit(problem, z0, method: str, budget: int, **kwargs):
    """The protocol's solve: ``budget`` evaluations, no gradient stop, unconstrained in the
    problem's box-normalised coordinates."""
    import optimus

    return optimus.minimize(
        problem.unit_objective,  # a bound method of the Module: its arrays are traced
        z0,
        method=method,
        steps=budget,
        max_evals=budget,
        gtol=0.0,
        **kwargs,
    )


def run_bench(config: BenchConfig, nets: dict[str, Any], notes: list[str]) -> BenchResults:
    """Run the protocol (tuning, then evaluation) and collect every run."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    todo, skip_notes = skipped_cells(config)
    notes = list(notes) + skip_notes
    from optimus.optimizers import LEARNED_METHODS

    methods = tuple(m for m in config.methods if m not in LEARNED_METHODS or m in nets)
    tuned = [m for m in methods if m in TUNED_METHODS]
    cells = [(f, v, n) for (f, n) in todo for v in config.variants]
    # evaluate small dimensions first: early progress is representative and cheap
    cells.sort(key=lambda c: (c[2], config.functions.index(c[0]), config.variants.index(c[1])))
    n_tune = sum(len(config.lr_grids[m]) for m in tuned) * config.tune_seeds * len(cells)
    total = n_tune + len(methods) * config.seeds * len(cells)
    runner = _Runner(config, nets)
    tuned_lr: dict[tuple[str, str, str, int], float] = {}
    tune_scores: dict[tuple[str, str, str, int], list[tuple[float, float]]] = {}
    runs: list[Run] = []
    bar = tqdm(
        total=total,
        desc="optimus bench",
        unit="run",
        file=sys.stderr,
        disable=not config.progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        for func, variant, n in cells:
            # tuning on the tuning seeds
            tune_problems = [_problem(func, variant, n, s, True) for s in range(config.tune_seeds)]
            for method in tuned:
                bar.set_postfix_str(f"tune {method} {func}/{variant}/n={n}", refresh=False)
                grid = config.lr_grids[method]

                def score(lr, method=method, grid=grid, problems=tune_problems):
                    logs = []
                    for problem, x0 in problems:
                        res, _, _ = runner.solve(method, problem, x0, lr)
                        logs.append(log10_floor(float(res.fun)))
                        if lr not in grid:  # an extension of the grid: not in the bar's total
                            bar.total += 1
                        bar.update()
                    finite = [v for v in logs if math.isfinite(v)]
                    return float(np.mean(finite)) if len(finite) == len(logs) else math.inf

                lr, tried = tune_learning_rate(score, grid)
                tuned_lr[(method, func, variant, n)] = lr
                tune_scores[(method, func, variant, n)] = tried
            # evaluation on the evaluation seeds
            eval_problems = [_problem(func, variant, n, s, False) for s in range(config.seeds)]
            for method in methods:
                bar.set_postfix_str(f"{method} {func}/{variant}/n={n}", refresh=False)
                lr = tuned_lr.get((method, func, variant, n))
                for seed, (problem, x0) in enumerate(eval_problems):
                    res, wall, comp = runner.solve(method, problem, x0, lr)
                    best = float(res.fun)
                    runs.append(
                        Run(
                            method=method,
                            function=func,
                            variant=variant,
                            dim=n,
                            seed=seed,
                            best=best,
                            last=float(res.last_fun),
                            log10_best=log10_floor(best),
                            iterations=int(res.nit),
                            evaluations=int(res.nfev),
                            wall_s=wall,
                            compile_s=comp,
                            learning_rate=lr,
                            status=res.status.name,
                            curve=_pad_curve(res.eval_history, config.steps),
                        )
                    )
                    bar.update()
    finally:
        bar.close()
    return BenchResults(
        config=config,
        runs=runs,
        methods=methods,
        cells=cells,
        tuned_lr=tuned_lr,
        tune_scores=tune_scores,
        compile_s=dict(runner.compile_s),
        notes=notes,
        total_s=time.perf_counter() - t_start,
        timestamp=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


# ---------------------------------------------------------------------------------------------
# outputs

CSV_COLUMNS = (
    "method",
    "function",
    "variant",
    "dim",
    "seed",
    "best",
    "last",
    "log10_best",
    "iterations",
    "evaluations",
    "wall_s",
    "compile_s",
    "learning_rate",
    "status",
)


def read_cell_means(path: str | Path) -> dict[tuple[str, str, str, int], float]:
    """Mean ``log10_best`` over seeds per (method, function, variant, dimension) of a
    ``results.csv`` written by :func:`write_csv`: the number every report compares."""
    runs: dict[tuple[str, str, str, int], list[float]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["method"], r["function"], r["variant"], int(r["dim"]))
            runs.setdefault(key, []).append(float(r["log10_best"]))
    return {k: sum(v) / len(v) for k, v in runs.items()}


def write_csv(results: BenchResults, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results.runs:
            w.writerow(
                [
                    r.method,
                    r.function,
                    r.variant,
                    r.dim,
                    r.seed,
                    repr(r.best),
                    repr(r.last),
                    f"{r.log10_best:.6g}",
                    r.iterations,
                    r.evaluations,
                    f"{r.wall_s:.6g}",
                    f"{r.compile_s:.6g}",
                    "" if r.learning_rate is None else repr(r.learning_rate),
                    r.status,
                ]
            )


def curve_key(method: str, function: str, variant: str, dim: int) -> str:
    return f"{method}__{function}__{variant}__{dim}"


def median_curves(results: BenchResults) -> dict[str, np.ndarray]:
    """Median over seeds of the best objective after each evaluation, per (method, function,
    variant, dim)."""
    groups: dict[str, list[np.ndarray]] = {}
    for r in results.runs:
        groups.setdefault(curve_key(r.method, r.function, r.variant, r.dim), []).append(r.curve)
    return {k: np.median(np.stack(v), axis=0) for k, v in groups.items()}


def write_curves(results: BenchResults, path: Path) -> None:
    curves = median_curves(results)
    np.savez(
        path,
        evaluations=np.arange(1, results.config.steps + 1),
        **curves,
    )


def versions() -> dict[str, str]:
    import jax

    import optimus

    return {
        "optimus": optimus.__version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": ", ".join(str(d) for d in jax.devices()),
    }


def main(args: argparse.Namespace) -> int:
    """Entry point of ``optimus bench`` (BenchError on bad input)."""
    config = resolve_config(args)
    nets, notes = load_learned(config)
    for line in notes:
        if "SKIPPED" in line:
            print(f"optimus bench: {line}", file=sys.stderr)
    from optimus.optimizers import LEARNED_METHODS

    if not any(m not in LEARNED_METHODS or m in nets for m in config.methods):
        raise BenchError(
            "no method can run: the requested learned methods have no weights "
            "(pass --params-dir or add classical methods)"
        )
    results = run_bench(config, nets, notes)
    if not results.runs:
        raise BenchError("nothing to run: every (function, dimension) pair was skipped")
    from optimus.bench.report import write_report

    out = config.out
    try:
        write_csv(results, out / "results.csv")
        write_curves(results, out / "curves.npz")
        figures: list[str] = []
        if config.plots:
            from optimus.bench.plots import write_plots

            figures = write_plots(results, out)
        write_report(results, out / "report.md", figures=figures, versions=versions())
    except OSError as e:
        raise BenchError(f"cannot write results to {out}: {e}") from None
    print(f"benchmark written to {out} ({results.total_s:.0f} s)")
    return 0
