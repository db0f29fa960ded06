"""Figures of a benchmark run (matplotlib, Agg backend, PNG).

- ``fig_objective_vs_dim.png``: one panel per function, mean log10 objective vs dimension, one
  line per method (the paper's Figure 1 style), transformed variant (the confidence intervals
  are in the report's tables).
- ``fig_curves.png``: median best objective vs evaluations, one panel per function, at the
  largest dimension run for it (transformed variant).
- ``fig_walltime.png``: median wall time per objective+gradient evaluation vs dimension.

When the transformed variant was not run, the first variant run is used (the titles say which).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from optimus.bench.run import BenchResults

_STYLE = {
    "optimus": dict(color="C3", lw=2.2, marker="o"),
    "optimus-noprecond": dict(color="C1", lw=1.6, marker="s", ls="--"),
    "mlp": dict(color="C4", lw=1.6, marker="^", ls="--"),
    "bfgs": dict(color="C0", lw=1.3, marker="v"),
    "lbfgs": dict(color="C9", lw=1.3, marker="<"),
    "scipy-lbfgsb": dict(color="0.45", lw=1.0, ls=":", marker="x"),
    "adam": dict(color="C2", lw=1.3, marker="D"),
    "sgd": dict(color="C7", lw=1.3, marker="x"),
    "sgdm": dict(color="C8", lw=1.3, marker="+"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(k: int) -> tuple[int, int]:
    cols = min(k, 4) if k > 1 else 1
    return math.ceil(k / cols), cols


def _dim_axis(ax, dims) -> None:
    """Log-scaled dimension axis with plain labels at the dimensions run."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    if len(dims) > 1:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(dims)))
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _variant(results: BenchResults) -> str:
    variants = [v for v in results.config.variants if any(c[1] == v for c in results.cells)]
    return "transformed" if "transformed" in variants else variants[0]


def _functions(results: BenchResults, variant: str) -> list[str]:
    return [
        f
        for f in results.config.functions
        if any(c[0] == f and c[1] == variant for c in results.cells)
    ]


def plot_objective_vs_dim(results: BenchResults, path: Path) -> Path:
    from optimus.bench.report import Stats

    plt = _plt()
    s = Stats(results)
    variant = _variant(results)
    funcs = _functions(results, variant)
    rows, cols = _grid(len(funcs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, func in zip(axes.flat, funcs, strict=False):
        dims = s.dims_of(func, variant)
        for m in s.methods:
            mu = np.array([s.mean(m, func, variant, n) for n in dims])
            if not np.any(np.isfinite(mu)):
                continue
            ax.plot(dims, mu, label=m, ms=4, **_STYLE.get(m, {}))
        _dim_axis(ax, dims)
        ax.set_title(func)
        ax.set_xlabel("dimension n")
        ax.set_ylabel("mean log10(f - f*)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(funcs) :]:
        ax.axis("off")
    title = (
        f"Mean final log10 objective vs dimension ({variant}, {results.config.steps} evaluations)"
    )
    return _save_panels(plt, fig, axes, title, path)


def _save_panels(plt, fig, axes, title: str, path: Path) -> Path:
    """Shared legend below a grid of panels, a title, and the PNG written and closed."""
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(results: BenchResults, path: Path) -> Path:
    from optimus.bench.run import median_curves

    plt = _plt()
    curves = median_curves(results)
    variant = _variant(results)
    funcs = _functions(results, variant)
    rows, cols = _grid(len(funcs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    evals = np.arange(1, results.config.steps + 1)
    for ax, func in zip(axes.flat, funcs, strict=False):
        n = max(c[2] for c in results.cells if c[0] == func and c[1] == variant)
        for m in results.methods:
            c = curves.get(f"{m}__{func}__{variant}__{n}")
            if c is None:
                continue
            y = np.log10(np.maximum(c, 1e-30))
            ax.plot(
                evals, y, label=m, **{k: v for k, v in _STYLE.get(m, {}).items() if k != "marker"}
            )
        ax.set_title(f"{func}, n = {n}")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("median log10 best f - f*")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(funcs) :]:
        ax.axis("off")
    title = f"Median best objective vs evaluations ({variant}, largest dimension)"
    return _save_panels(plt, fig, axes, title, path)


def plot_walltime(results: BenchResults, path: Path) -> Path:
    plt = _plt()
    per = results.wall_per_eval()
    dims = sorted({c[2] for c in results.cells})
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for m in results.methods:
        d = [n for n in dims if (m, n) in per]
        if not d:
            continue
        y = [1e3 * per[(m, n)] for n in d]
        ax.plot(d, y, label=m, ms=4, **_STYLE.get(m, {}))
    _dim_axis(ax, dims)
    ax.set_yscale("log")
    ax.set_xlabel("dimension n")
    ax.set_ylabel("ms per evaluation (median, compiled)")
    ax.set_title("Wall time per objective+gradient evaluation")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: BenchResults, out: Path) -> list[str]:
    """Write the three figures into ``out``; returns their paths."""
    out = Path(out)
    paths = [
        plot_objective_vs_dim(results, out / "fig_objective_vs_dim.png"),
        plot_curves(results, out / "fig_curves.png"),
        plot_walltime(results, out / "fig_walltime.png"),
    ]
    return [str(p) for p in paths]
