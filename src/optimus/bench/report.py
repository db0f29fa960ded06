"""Statistics of a benchmark run and its ``report.md``.

Every number in the report is computed from the runs; nothing is written by hand. Objective
values are ``f - f*`` with ``f* = 0`` exactly for every problem; ``log10`` values are floored at
:data:`optimus.bench.run.LOG10_FLOOR` (an exact 0 reads as -30). Means and 95% confidence
intervals (Student t, over seeds) are of these log10 values; "decades" are differences of
mean log10 values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from optimus.bench.run import BenchResults

CLASSICAL = ("bfgs", "lbfgs", "adam", "sgd", "sgdm")
OPTIMUS = "optimus"
#: at most this many lines in the "Where Optimus loses" list
MAX_LOSS_LINES = 60


class Stats:
    """Per-cell statistics of a :class:`~optimus.bench.run.BenchResults`."""

    def __init__(self, results: BenchResults):
        self.results = results
        self.config = results.config
        self.methods = results.methods
        self.budget = results.config.steps
        self.logs: dict[tuple[str, str, str, int], np.ndarray] = {}
        self.best: dict[tuple[str, str, str, int], np.ndarray] = {}
        self.runs: dict[tuple[str, str, str, int], list] = {}
        for r in results.runs:
            self.runs.setdefault((r.method, r.function, r.variant, r.dim), []).append(r)
        for key, runs in self.runs.items():
            runs.sort(key=lambda r: r.seed)
            self.logs[key] = np.array([r.log10_best for r in runs], dtype=np.float64)
            self.best[key] = np.array([r.best for r in runs], dtype=np.float64)
        self.cells = list(results.cells)  # (function, variant, dim)
        self.variants = [v for v in self.config.variants if any(c[1] == v for c in self.cells)]
        self.functions = [f for f in self.config.functions if any(c[0] == f for c in self.cells)]

    # -- basic statistics ------------------------------------------------------------------

    def mean(self, method: str, func: str, variant: str, dim: int) -> float:
        """Mean log10 best objective over seeds; NaN if the cell is missing or any run had no
        finite objective."""
        v = self.logs.get((method, func, variant, dim))
        if v is None or v.size == 0 or not np.all(np.isfinite(v)):
            return math.nan
        return float(np.mean(v))

    def ci(self, method: str, func: str, variant: str, dim: int) -> float:
        """Half-width of the 95% Student-t confidence interval of the mean (NaN if < 2 seeds)."""
        from scipy import stats

        v = self.logs.get((method, func, variant, dim))
        if v is None or v.size < 2 or not np.all(np.isfinite(v)):
            return math.nan
        return float(stats.t.ppf(0.975, v.size - 1) * np.std(v, ddof=1) / math.sqrt(v.size))

    def median_best(self, method: str, func: str, variant: str, dim: int) -> float:
        v = self.best.get((method, func, variant, dim))
        if v is None or v.size == 0:
            return math.nan
        return float(np.median(v))

    def dims_of(self, func: str, variant: str) -> list[int]:
        return sorted({c[2] for c in self.cells if c[0] == func and c[1] == variant})

    def cell_means(self, func: str, variant: str, dim: int) -> dict[str, float]:
        out = {m: self.mean(m, func, variant, dim) for m in self.methods}
        return {m: v for m, v in out.items() if math.isfinite(v)}

    def winners(self, func: str, variant: str, dim: int) -> list[str]:
        means = self.cell_means(func, variant, dim)
        if not means:
            return []
        low = min(means.values())
        return [m for m, v in means.items() if _tied(v, low)]

    # -- speed-up --------------------------------------------------------------------------

    def speedups(self, baseline: str, func: str, variant: str, dim: int) -> np.ndarray | None:
        """Per seed: budget / (evaluations Optimus needs to reach the baseline's final best
        value), 0 where it never does. None if either method is missing."""
        a = self.runs.get((OPTIMUS, func, variant, dim))
        b = self.runs.get((baseline, func, variant, dim))
        if not a or not b or len(a) != len(b):
            return None
        out = []
        for ra, rb in zip(a, b, strict=True):
            target = rb.best
            if not math.isfinite(target):
                out.append(math.nan)
                continue
            curve = np.nan_to_num(ra.curve, nan=np.inf)
            reached = np.nonzero(curve <= target)[0]
            out.append(self.budget / (reached[0] + 1) if reached.size else 0.0)
        return np.array(out, dtype=np.float64)


def lower_median(values: np.ndarray) -> float:
    """The median for an odd count, the lower of the two middle values for an even one."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    return float(v[(v.size - 1) // 2])


# ---------------------------------------------------------------------------------------------
# formatting helpers


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(k: int, n: int) -> str:
    return "n/a (no cells)" if n == 0 else f"{100.0 * k / n:.0f}% ({k}/{n})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _summary(values: Sequence[float]) -> str:
    v = np.array([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "n/a (no cells)"
    return (
        f"mean {v.mean():+.2f}, median {np.median(v):+.2f}, min {v.min():+.2f}, "
        f"max {v.max():+.2f} decades over {v.size} cells"
    )


# ---------------------------------------------------------------------------------------------
# report sections


def _settings(results: BenchResults, versions: dict[str, str], figures: Sequence[str]) -> list:
    from optimus.bench import run as R

    c = results.config
    lines = ["# Optimus benchmark report", ""]
    lines += [
        f"Generated {results.timestamp} by `optimus bench`"
        + (" --quick" if c.quick else "")
        + f"; total wall time of this run {results.total_s:.0f} s "
        f"({results.total_s / 60:.1f} min, compilation included).",
        "",
        "## Settings",
        "",
        f"- Mode: {'quick' if c.quick else 'full'}",
        f"- Functions: {', '.join(c.functions)}",
        f"- Variants: {', '.join(c.variants)}",
        f"- Dimensions: {', '.join(map(str, c.dims))}",
        f"- Methods requested: {', '.join(c.methods)}; run: {', '.join(results.methods)}",
        f"- Budget: {c.steps} objective+gradient evaluations per run "
        f"(`steps = max_evals = {c.steps}`, `gtol = 0`); every method works in box-normalised "
        "coordinates z = (x - c) / h of the problem's box, unconstrained (the box scales the "
        "problem; every optimum lies inside it). BFGS / L-BFGS spend several "
        "evaluations per iteration (the `iterations` column of results.csv); a run can stop "
        "before the budget (line search failure, non-finite objective, exactly zero gradient): "
        "its best value is then carried forward.",
        f"- Evaluation seeds: {c.seeds} (s = 0..{c.seeds - 1}, key "
        f"`fold_in(key({R.BASE_SEED}), {R.EVAL_SEED_OFFSET} + s)`); tuning seeds: "
        f"{c.tune_seeds} (key `fold_in(key({R.BASE_SEED}), s)`), disjoint. Each key is split "
        "into a problem key (shift / rotation) and a starting-point key "
        "(`x0 = problem.sample_x0(key)`, uniform in the box).",
        "- Learning rates of "
        + ", ".join(m for m in R.TUNED_METHODS)
        + " tuned per (function, variant, dimension) on the tuning seeds (lowest mean final "
        "log10 objective; ties: the smaller rate). Grids: "
        + "; ".join(f"{m}: {', '.join(f'{x:g}' for x in g)}" for m, g in c.lr_grids.items())
        + f". When the best value lies at an end of its grid, the grid is extended past that "
        f"end one step at a time, up to {R.GRID_EXTENSION} steps, while the next value scores "
        "strictly lower.",
        f"- Metric: log10(f - f*) of the best objective seen (f* = 0 exactly), floored at "
        f"{R.LOG10_FLOOR:g} (an exact 0 reads as {R.LOG10_FLOOR:g}); mean ± 95% Student-t "
        "confidence interval over seeds. A cell is n/a when some run had no finite value "
        "(e.g. Perm overflowing at the starting point).",
        "- Timing: `wall_s` is a call whose solve is already compiled; `compile_s` is measured "
        "once per (method, dimension) as the first call minus a repeated identical call.",
        f"- Run-time estimate of the full protocol: {R.FULL_RUNTIME_NOTE}",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in results.notes] or ["- none"]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return lines + [""]


def _result_tables(s: Stats) -> list[str]:
    lines = [
        "## Results: mean ± 95% CI of log10(f - f*) (lower is better; best, and any within "
        "0.01 decades of it, in bold)",
        "",
    ]
    for func in s.functions:
        for variant in s.variants:
            dims = s.dims_of(func, variant)
            if not dims:
                continue
            lines += [f"### {func} ({variant})", ""]
            rows = []
            for n in dims:
                win = set(s.winners(func, variant, n))
                row = [str(n)]
                for m in s.methods:
                    mu, ci = s.mean(m, func, variant, n), s.ci(m, func, variant, n)
                    if not math.isfinite(mu):
                        txt = "n/a"
                    else:
                        txt = f"{mu:.2f}" + (f" ± {ci:.2f}" if math.isfinite(ci) else "")
                    row.append(f"**{txt}**" if m in win else txt)
                rows.append(row)
            lines += _table(["n", *s.methods], rows)
    lines += ["## Median final objective (best seen, f - f*)", ""]
    for variant in s.variants:
        lines += [f"### {variant}", ""]
        rows = []
        for func in s.functions:
            for n in s.dims_of(func, variant):
                row = [func, str(n)]
                row += [f"{s.median_best(m, func, variant, n):.2e}" for m in s.methods]
                rows.append(row)
        lines += _table(["function", "n", *s.methods], rows)
    return lines


def _wins(s: Stats) -> list[str]:
    lines = [
        "## Wins per method",
        "",
        "Cells (function, dimension) where the method has the lowest mean log10 objective "
        "(every method within 0.01 decades of the lowest counts: a tie).",
        "",
    ]
    rows = []
    totals = dict.fromkeys(s.methods, 0)
    per_variant = {v: dict.fromkeys(s.methods, 0) for v in s.variants}
    n_cells = {v: 0 for v in s.variants}
    for func, variant, n in s.cells:
        win = s.winners(func, variant, n)
        if win:
            n_cells[variant] += 1
        for m in win:
            per_variant[variant][m] += 1
            totals[m] += 1
    for m in s.methods:
        rows.append([m, *[str(per_variant[v][m]) for v in s.variants], str(totals[m])])
    rows.append(["(cells)", *[str(n_cells[v]) for v in s.variants], str(sum(n_cells.values()))])
    return lines + _table(["method", *s.variants, "total"], rows)


def _speedup(s: Stats) -> list[str]:
    lines = [
        "## Speed-up of Optimus at equal evaluations",
        "",
        f"Median over seeds of budget / (evaluations Optimus needs to reach the baseline's final "
        f"best value), budget = {s.budget}; a seed where Optimus never reaches it counts as 0, "
        "and a median of 0 reads 'n/a (not reached)'. With an even number of seeds the lower "
        "median is used (no averaging with a not-reached 0). In brackets: seeds where it was "
        "reached.",
        "",
    ]
    if OPTIMUS not in s.methods:
        return lines + ["Not computed: method optimus was not run.", ""]
    baselines = [m for m in s.methods if m != OPTIMUS]
    for variant in s.variants:
        lines += [f"### {variant}", ""]
        rows = []
        for func in s.functions:
            for n in s.dims_of(func, variant):
                row = [func, str(n)]
                for b in baselines:
                    sp = s.speedups(b, func, variant, n)
                    if sp is None or not np.all(np.isfinite(sp)):
                        row.append("n/a")
                        continue
                    med = lower_median(sp)
                    k = int(np.sum(sp > 0))
                    txt = f"{med:.3g}x" if med > 0 else "n/a (not reached)"
                    row.append(f"{txt} ({k}/{sp.size})")
                rows.append(row)
        lines += _table(["function", "n", *baselines], rows)
    return lines


def _timing(s: Stats) -> list[str]:
    lines = [
        "## Wall time",
        "",
        "Median wall time per objective+gradient evaluation (ms), over all runs of a (method, "
        "dimension), compiled solve: wall_s / evaluations, so the fixed per-call overhead of "
        "`minimize` (validation, dispatch, a few ms) dominates at small n; then compile time per "
        "(method, dimension) (s). `scipy-lbfgsb` is scipy's L-BFGS-B driving a jitted JAX "
        "objective+gradient from Python (one host round trip per evaluation): the reference "
        "for what a scipy user pays today.",
        "",
    ]
    dims = sorted({c[2] for c in s.cells})
    per = s.results.wall_per_eval()
    rows = []
    for n in dims:
        row = [str(n)]
        for m in s.methods:
            v = per.get((m, n))
            row.append(f"{1e3 * v:.3g}" if v is not None else "n/a")
        rows.append(row)
    lines += _table(["n", *s.methods], rows)
    rows = []
    for n in dims:
        row = [str(n)]
        for m in s.methods:
            v = s.results.compile_s.get((m, n))
            row.append(f"{v:.1f}" if v is not None else "n/a")
        rows.append(row)
    lines += ["Compile time (s):", ""] + _table(["n", *s.methods], rows)
    return lines


def _termination(s: Stats) -> list[str]:
    lines = [
        "## Termination",
        "",
        "Runs per method and status, and the mean number of evaluations and iterations used "
        f"(budget {s.budget}). Early stops: CONVERGED means an exactly zero gradient (with "
        "`gtol = 0`; in box coordinates also a point where every coordinate is clipped at the "
        "box), LINESEARCH_FAILED a line search that could not make progress, NONFINITE a "
        "non-finite objective (a diverging step).",
        "",
    ]
    statuses = sorted({r.status for r in s.results.runs})
    rows = []
    for m in s.methods:
        runs = [r for r in s.results.runs if r.method == m]
        if not runs:
            continue
        row = [m] + [str(sum(r.status == st for r in runs)) for st in statuses]
        row += [
            f"{np.mean([r.evaluations for r in runs]):.1f}",
            f"{np.mean([r.iterations for r in runs]):.1f}",
        ]
        rows.append(row)
    return lines + _table(["method", *statuses, "mean evaluations", "mean iterations"], rows)


def _tuning(s: Stats) -> list[str]:
    from optimus.bench import run as R

    tuned = s.results.tuned_lr
    if not tuned:
        return []
    methods = sorted({k[0] for k in tuned})
    lines = [
        "## Tuned learning rates",
        "",
        "Chosen per (function, variant, dimension) on the tuning seeds, the grid extended past "
        f"an end by up to {R.GRID_EXTENSION} steps when the best value lay there; '(edge)' "
        "marks a value at the limit of that extension (the optimum may lie beyond it).",
        "",
    ]
    grids = s.config.lr_grids
    rows = []
    n_edge = 0
    for func, variant, n in sorted(
        s.cells, key=lambda c: (s.functions.index(c[0]), s.variants.index(c[1]), c[2])
    ):
        row = [func, variant, str(n)]
        for m in methods:
            lr = tuned.get((m, func, variant, n))
            if lr is None:
                row.append("n/a")
                continue
            edge = lr in R.grid_limits(grids[m])
            n_edge += edge
            row.append(f"{lr:g}" + (" (edge)" if edge else ""))
        rows.append(row)
    lines += _table(["function", "variant", "n", *methods], rows)
    lines += [
        f"{n_edge} of {len(tuned)} tuned values lie at the limit of their extended grid.",
        "",
    ]
    return lines


TIE = 0.01  # decades: mean log10 objectives closer than this count as a tie


def _tied(a: float, b: float) -> bool:
    return abs(a - b) < TIE


def _beats(ours: float, theirs: float) -> bool:
    """A win: lower, and not a tie (a difference below ``TIE`` decades)."""
    return ours < theirs and not _tied(ours, theirs)


def _ties(cells, ours, theirs) -> str:
    """How many cells are ties (|difference| < ``TIE`` decades), which no method can win,
    how many of them sit at the log10 floor (both exact to float precision), and the share
    of the remaining cells that Optimus wins."""
    from optimus.bench.run import LOG10_FLOOR

    tied = [(f, n) for f, n in cells if _tied(ours(f, n), theirs(f, n))]
    losses = sum(
        ours(f, n) > theirs(f, n) for f, n in cells if (f, n) not in tied
    )  # fmt: skip
    if not tied:
        return f" No ties; {losses} losses."
    floor = sum(max(ours(f, n), theirs(f, n)) <= LOG10_FLOOR + TIE for f, n in tied)
    wins = sum(ours(f, n) < theirs(f, n) for f, n in cells if (f, n) not in tied)
    return (
        f" Ties (|difference| < {TIE} decades, not counted as wins) in {len(tied)} of "
        f"{len(cells)} cells, {floor} of them with both at the {LOG10_FLOOR:g} floor; "
        f"{losses} losses; outside ties Optimus is lower in "
        f"{_pct(wins, len(cells) - len(tied))}."
    )


def _issue_targets(s: Stats) -> list[str]:
    from optimus import functions as F

    lines = [
        "## Issue targets",
        "",
        "Computed from the result tables below, per (function, dimension) cell of the transformed "
        "variant unless stated; 'decades' are differences of mean log10 objectives, positive "
        "= Optimus better (lower).",
        "",
    ]
    if OPTIMUS not in s.methods:
        return lines + ["Not computed: method optimus was not run (no weights).", ""]
    variant = "transformed"
    if variant not in s.variants:
        lines += [f"The transformed variant was not run; using {s.variants[0]!r} instead.", ""]
        variant = s.variants[0]
    cells = [(f, n) for f, v, n in s.cells if v == variant]

    def m_(method: str, f: str, n: int) -> float:
        return s.mean(method, f, variant, n)

    def have(*ms: str) -> bool:
        return all(m in s.methods for m in ms)

    # 1. adam and sgdm
    if have("adam", "sgdm"):
        ok = [
            (f, n)
            for f, n in cells
            if all(map(math.isfinite, [m_(x, f, n) for x in (OPTIMUS, "adam", "sgdm")]))
        ]
        b_adam = sum(_beats(m_(OPTIMUS, f, n), m_("adam", f, n)) for f, n in ok)
        b_sgdm = sum(_beats(m_(OPTIMUS, f, n), m_("sgdm", f, n)) for f, n in ok)
        both = sum(
            _beats(m_(OPTIMUS, f, n), min(m_("adam", f, n), m_("sgdm", f, n))) for f, n in ok
        )
        lines.append(
            f"- Optimus beats adam **and** sgdm (tuned) by >= {TIE} decades in "
            f"{_pct(both, len(ok))} of cells "
            f"(adam alone: {_pct(b_adam, len(ok))}; sgdm alone: {_pct(b_sgdm, len(ok))})."
            + _ties(
                ok,
                lambda f, n: m_(OPTIMUS, f, n),
                lambda f, n: min(m_("adam", f, n), m_("sgdm", f, n)),
            )
        )
    else:
        lines.append("- Optimus vs adam and sgdm: not computed (adam or sgdm not run).")
    # 2. better of bfgs / lbfgs
    qn = [m for m in ("bfgs", "lbfgs") if m in s.methods]
    if qn:
        ok = [
            (f, n)
            for f, n in cells
            if math.isfinite(m_(OPTIMUS, f, n)) and all(math.isfinite(m_(q, f, n)) for q in qn)
        ]
        k = sum(_beats(m_(OPTIMUS, f, n), min(m_(q, f, n) for q in qn)) for f, n in ok)
        lines.append(
            f"- Optimus beats the better of {'/'.join(qn)} by >= {TIE} decades in "
            f"{_pct(k, len(ok))} of cells."
            + _ties(ok, lambda f, n: m_(OPTIMUS, f, n), lambda f, n: min(m_(q, f, n) for q in qn))
        )
    else:
        lines.append("- Optimus vs BFGS / L-BFGS: not computed (neither was run).")
    # 3. margin on multimodal functions, n >= 10
    classical = [m for m in CLASSICAL if m in s.methods]
    others = [m for m in s.methods if m != OPTIMUS]

    def margin(f: str, n: int, pool: Sequence[str]) -> float:
        vals = [m_(m, f, n) for m in pool]
        if not pool or not all(map(math.isfinite, vals)) or not math.isfinite(m_(OPTIMUS, f, n)):
            return math.nan
        return min(vals) - m_(OPTIMUS, f, n)

    multi = [(f, n) for f, n in cells if F.get(f).multimodal and n >= 10]
    if classical:
        lines.append(
            "- Margin on multimodal functions at n >= 10 over the best classical baseline "
            f"({', '.join(classical)}): {_summary([margin(f, n, classical) for f, n in multi])}."
        )
    if others:
        lines.append(
            "- Same, over the best of all other methods: "
            f"{_summary([margin(f, n, others) for f, n in multi])}."
        )
        per_func = []
        for f in s.functions:
            vals = [margin(f, n, others) for g, n in multi if g == f]
            vals = [v for v in vals if math.isfinite(v)]
            if vals:
                per_func.append(f"{f} {np.mean(vals):+.2f}")
        if per_func:
            lines.append("  Per function (mean over n >= 10): " + ", ".join(per_func) + ".")
    # 4. gap on smooth functions (positive = Optimus worse)
    smooth = [(f, n) for f, n in cells if F.get(f).smooth]
    if qn:
        gaps = [-margin(f, n, qn) for f, n in smooth]
        lines.append(
            f"- Gap on smooth functions to the better of {'/'.join(qn)} (Optimus minus it, "
            f"positive = Optimus worse): {_summary(gaps)}."
        )
    if others:
        gaps = [-margin(f, n, others) for f, n in smooth]
        lines.append(
            f"- Gap on smooth functions to the best other method (positive = Optimus worse): "
            f"{_summary(gaps)}."
        )
    # 5. optimus vs mlp and noprecond, all variants run
    for other in ("mlp", "optimus-noprecond"):
        if other not in s.methods:
            lines.append(f"- Optimus vs {other}: not computed ({other} not run).")
            continue
        for scope, vs in ((variant, [variant]), ("all variants", s.variants)):
            diffs = []
            for f, v, n in s.cells:
                if v in vs:
                    a, b = s.mean(OPTIMUS, f, v, n), s.mean(other, f, v, n)
                    if math.isfinite(a) and math.isfinite(b):
                        diffs.append(b - a)
            k = sum(d > 0 for d in diffs)
            lines.append(
                f"- Optimus vs {other} ({scope}): {other} minus Optimus {_summary(diffs)}; "
                f"Optimus lower in {_pct(k, len(diffs))}."
            )
            if len(s.variants) == 1:
                break
    # 6. off-centre (and canonical) vs transformed, per method
    for alt in ("offcentre", "canonical"):
        if alt not in s.variants or "transformed" not in s.variants:
            lines.append(f"- {alt} vs transformed: not computed (both variants needed).")
            continue
        rows = []
        for m in s.methods:
            diffs, ranks_t, ranks_a = [], [], []
            for f in s.functions:
                for n in set(s.dims_of(f, "transformed")) & set(s.dims_of(f, alt)):
                    a, t = s.mean(m, f, alt, n), s.mean(m, f, "transformed", n)
                    if math.isfinite(a) and math.isfinite(t):
                        diffs.append(a - t)
                        ranks_t.append(_rank(s, m, f, "transformed", n))
                        ranks_a.append(_rank(s, m, f, alt, n))
            if diffs:
                rows.append(
                    [
                        m,
                        f"{np.mean(diffs):+.2f}",
                        f"{np.mean(ranks_t):.2f}",
                        f"{np.mean(ranks_a):.2f}",
                        str(len(diffs)),
                    ]
                )
        lines += [
            "",
            f"{alt} vs transformed: mean over (function, n) of mean log10 ({alt}) minus mean "
            f"log10 (transformed) (positive = worse on {alt}), and the mean rank of the method "
            "among those run (1 = best) in each variant:",
            "",
        ]
        lines += _table(
            [
                "method",
                f"{alt} - transformed (decades)",
                "rank transformed",
                f"rank {alt}",
                "cells",
            ],
            rows,
        )
    return lines + [""]


def _rank(s: Stats, method: str, f: str, v: str, n: int) -> float:
    means = s.cell_means(f, v, n)
    if method not in means:
        return math.nan
    return 1.0 + sum(x < means[method] - 1e-9 for x in means.values())


def _losses(s: Stats) -> list[str]:
    from scipy import stats

    lines = [
        "## Where Optimus loses",
        "",
        "Cells where another method has a lower mean log10 objective than Optimus, largest "
        "margin first (decades = Optimus minus winner); 'significant' = Welch t-test p < 0.05 "
        "over seeds.",
        "",
    ]
    if OPTIMUS not in s.methods:
        return lines + ["Not computed: method optimus was not run.", ""]
    losses = []
    n_cells = 0
    for f, v, n in s.cells:
        means = s.cell_means(f, v, n)
        if OPTIMUS not in means or len(means) < 2:
            continue
        n_cells += 1
        winner = min((m for m in means if m != OPTIMUS), key=lambda m: means[m])
        gap = means[OPTIMUS] - means[winner]
        if gap <= 1e-9:
            continue
        a, b = s.logs[(OPTIMUS, f, v, n)], s.logs[(winner, f, v, n)]
        p = math.nan
        if a.size >= 2 and b.size >= 2 and (np.std(a) > 0 or np.std(b) > 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        sig = (
            "yes" if (math.isfinite(p) and p < 0.05) else ("n/a" if not math.isfinite(p) else "no")
        )
        losses.append((gap, f, v, n, winner, means[winner], means[OPTIMUS], sig))
    losses.sort(key=lambda t: -t[0])
    n_sig = sum(t[-1] == "yes" for t in losses)
    lines.append(
        f"Optimus is not the best in {_pct(len(losses), n_cells)} of cells ({n_sig} significant)."
    )
    lines.append("")
    if losses:
        by_func: dict[str, int] = {}
        for t in losses:
            by_func[t[1]] = by_func.get(t[1], 0) + 1
        lines.append("Losses per function: " + ", ".join(f"{k} {v}" for k, v in by_func.items()))
        lines.append("")
        rows = [
            [f, v, str(n), w, f"{mw:.2f}", f"{mo:.2f}", f"{g:.2f}", sig]
            for g, f, v, n, w, mw, mo, sig in losses[:MAX_LOSS_LINES]
        ]
        lines += _table(
            [
                "function",
                "variant",
                "n",
                "winner",
                "winner mean",
                "optimus mean",
                "decades",
                "significant",
            ],
            rows,
        )
        if len(losses) > MAX_LOSS_LINES:
            lines += [f"... and {len(losses) - MAX_LOSS_LINES} more (see results.csv).", ""]
    return lines


def build_report(
    results: BenchResults, *, figures: Sequence[str] = (), versions: dict[str, str] | None = None
) -> str:
    s = Stats(results)
    lines = _settings(results, versions or {}, figures)
    lines += _issue_targets(s)
    lines += _wins(s)
    lines += _result_tables(s)
    lines += _speedup(s)
    lines += _losses(s)
    lines += _termination(s)
    lines += _timing(s)
    lines += _tuning(s)
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    results: BenchResults,
    path: Path,
    *,
    figures: Sequence[str] = (),
    versions: dict[str, str] | None = None,
) -> None:
    Path(path).write_text(build_report(results, figures=figures, versions=versions))
