#!/usr/bin/env python
"""Compare one method between two benchmark runs, cell by cell.

    .venv/bin/python scripts/compare_bench.py A/results.csv B/results.csv [--method optimus]
        [--out FILE.md]

Reads two ``results.csv`` written by ``optimus bench`` (e.g. the shipped weights and weights
given with ``--params-dir``, on the same protocol), and prints, for every (function, variant,
dimension) cell both runs hold, the mean over seeds of ``log10_best`` in A and in B and the
difference B − A (negative: B reached lower objective values). The summary line gives the mean
and median difference and in how many cells B is lower, equal (|Δ| < 0.05 decades) or higher.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def cells(path: str, method: str) -> dict[tuple[str, str, int], float]:
    from optimus.bench.run import read_cell_means

    return {k[1:]: v for k, v in read_cell_means(path).items() if k[0] == method}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--method", default="optimus")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    a, b = cells(args.a, args.method), cells(args.b, args.method)
    keys = sorted(a.keys() & b.keys())
    if not keys:
        raise SystemExit(f"no common cells of method {args.method!r} in {args.a} and {args.b}")
    lines = [
        f"`{args.method}`: mean log10(f − f*) of the best iterate; A = `{args.a}`, B = `{args.b}`.",
        "",
        "| function | variant | n | A | B | B − A |",
        "|---|---|---|---|---|---|",
    ]
    diffs = []
    for k in keys:
        d = b[k] - a[k]
        diffs.append(d)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {a[k]:.2f} | {b[k]:.2f} | {d:+.2f} |")
    lower = sum(d <= -0.05 for d in diffs)
    higher = sum(d >= 0.05 for d in diffs)
    lines += [
        "",
        f"B − A over {len(diffs)} cells: mean {statistics.mean(diffs):+.2f}, median "
        f"{statistics.median(diffs):+.2f} decades; B lower in {lower}, within 0.05 in "
        f"{len(diffs) - lower - higher}, higher in {higher}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
