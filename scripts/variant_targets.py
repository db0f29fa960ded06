#!/usr/bin/env python
"""Score variants of the learned optimizer against the issue targets, beside a reference run.

    .venv/bin/python scripts/variant_targets.py bench_results/targets/results.csv \\
        NAME=runs/x/results.csv [NAME=...] [--method optimus] [--out FILE.md]

The reference ``results.csv`` (``make targets``) holds every method; each variant's
``results.csv`` holds at least ``--method`` on the same protocol (``optimus bench
--methods optimus --params-dir DIR``, with the variant's weights in ``DIR/optimus.npz``).
Every variant is compared with the reference run's baselines, so the baselines are the same
numbers for all rows. Per variant, transformed cells unless stated ("decades": differences of
mean log10 f of the best iterate):

* mean change against the reference run's ``--method`` (transformed and off-centre);
* cells where it beats tuned Adam *and* tuned SGD-momentum, and the better of BFGS / L-BFGS;
* the mean margin over the better of BFGS / L-BFGS on the multimodal functions at n >= 10;
* smooth-function cells within 1 decade of the better of BFGS / L-BFGS.

These are the counts of the README's targets table, computed the same way as
``optimus.bench.report`` (strictly lower mean; no tie rule).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

MULTIMODAL = ("rastrigin", "levy", "ackley", "griewank")
SMOOTH = ("sphere", "quadratic", "rosenbrock", "dixon_price", "powell")
BASELINES = ("adam", "sgdm", "bfgs", "lbfgs")


def targets(ref: dict, ours: dict, method: str, variant: str = "transformed") -> dict:
    """Target counts of ``method``'s cells in ``ours`` against the baselines of ``ref``."""
    cells = sorted({(f, n) for (m, f, v, n) in ours if m == method and v == variant})
    cells = [(f, n) for f, n in cells if all((b, f, variant, n) in ref for b in BASELINES)]
    if not cells:
        raise SystemExit(f"no {variant} cells of {method!r} with every baseline in the reference")

    def o(f, n):
        return ours[(method, f, variant, n)]

    def b(m, f, n):
        return ref[(m, f, variant, n)]

    def qn(f, n):
        return min(b("bfgs", f, n), b("lbfgs", f, n))

    first = sum(o(f, n) < min(b("adam", f, n), b("sgdm", f, n)) for f, n in cells)
    second = sum(o(f, n) < qn(f, n) for f, n in cells)
    margins = [qn(f, n) - o(f, n) for f, n in cells if f in MULTIMODAL and n >= 10]
    smooth = [(f, n) for f, n in cells if f in SMOOTH]
    within = sum(o(f, n) - qn(f, n) <= 1 for f, n in smooth)
    return {
        "cells": len(cells),
        "adam_sgdm": first,
        "qn": second,
        "margin": statistics.mean(margins) if margins else float("nan"),
        "smooth": within,
        "smooth_cells": len(smooth),
    }


def mean_change(ref: dict, ours: dict, method: str, variant: str) -> str:
    keys = [k for k in ours if k[0] == method and k[2] == variant and k in ref]
    return f"{statistics.mean(ours[k] - ref[k] for k in keys):+.3f}" if keys else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", help="results.csv of the reference run (all methods)")
    p.add_argument("variants", nargs="+", metavar="NAME=RESULTS.csv")
    p.add_argument("--method", default="optimus")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from optimus.bench.run import read_cell_means

    ref = read_cell_means(args.reference)
    rows = [("reference", ref)]
    for spec in args.variants:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"expected NAME=RESULTS.csv, got {spec!r}")
        rows.append((name, read_cell_means(path)))
    lines = [
        f"`{args.method}` against the baselines of `{args.reference}` (transformed cells "
        "unless stated; Δ = mean change of log10 f against the reference run's "
        f"`{args.method}`, negative = lower).",
        "",
        "| variant | Δ transformed | Δ off-centre | beats Adam and SGD-m | beats better of "
        "BFGS/L-BFGS | multimodal margin, n ≥ 10 | smooth within 1 decade |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ours in rows:
        t = targets(ref, ours, args.method)
        dt = mean_change(ref, ours, args.method, "transformed")
        do = mean_change(ref, ours, args.method, "offcentre")
        lines.append(
            f"| {name} | {dt} | {do} | {t['adam_sgdm']}/{t['cells']} | "
            f"{t['qn']}/{t['cells']} | {t['margin']:+.2f} | {t['smooth']}/{t['smooth_cells']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
