"""Recompute the "Issue targets" lines of a committed benchmark run from its ``results.csv``
with the current counting rules of :mod:`optimus.bench.report` (a win needs a lead of at
least 0.01 decades; cells the benchmark now skips, such as Perm above n = 6, left out).

Used for runs that were not repeated after the rules changed (2026-11-28): their
``report.md`` keeps the counts of the rules it was generated with, and this prints what the
current rules give on the same results. Nothing is re-run.

    python scripts/recount_targets.py bench_results/full [bench_results/targets30 ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def load(folder: Path):
    from optimus.bench import report as R
    from optimus.bench import run as B

    with (folder / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{folder}/results.csv has no rows")
    functions = tuple(dict.fromkeys(r["function"] for r in rows))
    variants = tuple(dict.fromkeys(r["variant"] for r in rows))
    dims = tuple(sorted({int(r["dim"]) for r in rows}))
    methods = tuple(dict.fromkeys(r["method"] for r in rows))
    steps = max(int(r["evaluations"]) for r in rows)
    config = B.BenchConfig(
        functions=functions,
        variants=variants,
        dims=dims,
        methods=methods,
        steps=steps,
        seeds=len({r["seed"] for r in rows}),
        tune_seeds=0,
        out=folder,
        lr_grids={},
    )
    todo, notes = B.skipped_cells(config)
    keep = set(todo)
    runs = []
    for r in rows:
        if (r["function"], int(r["dim"])) not in keep:
            continue
        best = float(r["best"])
        runs.append(
            B.Run(
                r["method"],
                r["function"],
                r["variant"],
                int(r["dim"]),
                int(r["seed"]),
                best,
                float(r["last"]),
                float(r["log10_best"]),
                int(r["iterations"]),
                int(r["evaluations"]),
                float(r["wall_s"]),
                float(r["compile_s"]),
                float(r["learning_rate"]) if r["learning_rate"] else None,
                r["status"],
                np.full(steps, best),
            )  # fmt: skip
        )
    cells = sorted({(r.function, r.variant, r.dim) for r in runs}, key=lambda c: (c[2], c[0], c[1]))
    results = B.BenchResults(config, runs, methods, cells, {}, {}, {}, notes)
    return R, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.folders:
        R, results = load(folder)
        stats = R.Stats(results)
        print(f"## {folder} (recounted with the current rules)\n")
        print("\n".join(R._issue_targets(stats)))
        print("\n".join(R._wins(stats)))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
