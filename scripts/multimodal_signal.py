#!/usr/bin/env python
"""How much a gradient says about where the global minimum lies, on the benchmark's problems.

    .venv/bin/python scripts/multimodal_signal.py --out bench_results/multimodal_signal.md

The meta-training issue asks Optimus to beat the best other method by half a decade on the
multimodal functions at n >= 10, and to approach the paper's canonical values at n = 100
(Ackley 6.8e-6, Levy 4.0e-6), i.e. to find the global basin within 100 evaluations. This
script measures, at the benchmark's own starting points (evaluation seeds, box-normalised
coordinates ``z``, the same problems as ``optimus bench``), the cosine between a descent
direction and the direction to the optimum ``z* - z0``:

- ``k = 1, rho = 0``: the gradient at the start, what every method's first step sees;
- ``k`` gradients averaged over Gaussian perturbations of the start with standard deviation
  ``rho`` box half-widths per coordinate: the gradient of the Gaussian-smoothed objective as
  well as ``k`` evaluations can estimate it (``k = 100`` is the whole budget spent on one
  direction).

A random direction has ``|cos|`` of about ``1/sqrt(n)``. Where the mean cosine stays at that
level, the evaluations carry no usable information about the global basin's direction, and
no method that is not told where optima tend to lie (the canonical functions put them at 0
or 1; our networks never see the position) can be expected to find it. Each row also gives
the distance left after the best step along the direction, ``sqrt(1 - cos^2)`` of the
start's distance, averaged.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

FUNCTIONS = ("sphere", "quadratic", "rosenbrock", "rastrigin", "levy", "ackley", "griewank")
SETTINGS = ((1, 0.0), (10, 0.05), (100, 0.05), (10, 0.2), (100, 0.2))


def _grads():
    import equinox as eqx
    import jax

    # the problem is an argument: one compilation per (shape, k), not per seed
    return eqx.filter_jit(lambda p, zs: jax.vmap(jax.grad(p.unit_objective))(zs))


def cosines(name: str, variant: str, n: int, seeds: int, key_seed: int) -> dict:
    """Mean cosine (and mean remaining-distance fraction) per (k, rho) setting over ``seeds``
    evaluation problems of the benchmark."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from optimus.bench.run import _problem

    grad = _grads()
    out: dict[tuple[int, float], list[float]] = {s: [] for s in SETTINGS}
    for seed in range(seeds):
        problem, x0 = _problem(name, variant, n, seed, tuning=False)
        z0 = problem.to_unit(x0)
        d = np.asarray(problem.to_unit(problem.x_opt) - z0, np.float64)
        key = jax.random.fold_in(jax.random.key(key_seed), seed)
        # every setting's points in one batch: one compilation per n for all functions
        xi = jnp.concatenate(
            [
                rho * jax.random.normal(jax.random.fold_in(key, j), (k, n))
                for j, (k, rho) in enumerate(SETTINGS)
            ]
        )
        gs = np.asarray(grad(problem, z0[None, :] + xi), np.float64)
        start = 0
        for k, rho in SETTINGS:
            g = gs[start : start + k].mean(axis=0)
            start += k
            cos = float(-g @ d / (np.linalg.norm(g) * np.linalg.norm(d) + 1e-300))
            out[(k, rho)].append(cos)
    return {
        s: (float(np.mean(v)), float(np.std(v)), float(np.mean(np.sqrt(1 - np.square(v)))))
        for s, v in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="10,30,100")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--variants", default="canonical,transformed")
    p.add_argument("--functions", default=",".join(FUNCTIONS))
    p.add_argument("--out", default="", help="write a Markdown report here")
    args = p.parse_args(argv)
    dims = [int(v) for v in args.dims.split(",") if v]
    variants = [v for v in args.variants.split(",") if v]
    names = [v for v in args.functions.split(",") if v]
    if args.seeds < 1 or not dims or min(dims) < 1:
        raise SystemExit("--seeds and --dims must be positive")

    t0 = time.time()
    head = (
        "| function | variant | n | 1/√n | "
        + " | ".join(f"k={k}, ρ={rho:g}" for k, rho in SETTINGS)
        + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(SETTINGS))]
    for name in names:
        for variant in variants:
            for n in dims:
                r = cosines(name, variant, n, args.seeds, 7)
                cells = [f"{r[s][0]:+.3f} ± {r[s][1]:.3f} ({r[s][2]:.3f})" for s in SETTINGS]
                row = f"| {name} | {variant} | {n} | {n**-0.5:.3f} | " + " | ".join(cells) + " |"
                lines.append(row)
                print(row, flush=True)
    text = "\n".join(
        [
            "# Does the gradient point to the global minimum? (`scripts/multimodal_signal.py`)",
            "",
            f"Evaluation seeds 0–{args.seeds - 1} of `optimus bench` (the same problems and"
            " starting points), box-normalised coordinates. Each cell: mean ± standard"
            " deviation over the seeds of cos(−ĝ, z* − z₀), where ĝ is the mean of k gradients"
            " at z₀ + ρξ, ξ ~ N(0, I) (k = 1, ρ = 0: the plain gradient at the start), and in"
            " brackets the mean fraction of the distance to the optimum left after the best"
            " step along −ĝ, √(1 − cos²). A random direction has |cos| ≈ 1/√n.",
            "",
            *lines,
            "",
            f"{time.time() - t0:.0f} s. Command: `.venv/bin/python scripts/multimodal_signal.py"
            f" --dims {args.dims} --seeds {args.seeds} --variants {args.variants}`",
            "",
        ]
    )
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
