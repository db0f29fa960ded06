#!/usr/bin/env python
"""Throughput of ``optimus.minimize_batch`` against a loop of ``optimus.minimize`` calls.

    .venv/bin/python scripts/bench_batch.py                   # the committed run (~5 min)
    .venv/bin/python scripts/bench_batch.py --quick           # a smoke run (~1 min)

A family of related problems: one benchmark function, every problem with its own optimum
``c_b`` and start ``x0_b``, ``f(x; c_b) = F(x - c_b + x*)`` (``x*`` the canonical minimiser,
``c_b`` uniform in the central half of the box, ``x0_b`` uniform in the box; bounds = the
function's box). Both paths solve the same ``B`` problems with the benchmark's budget of
100 objective+gradient evaluations (``steps = max_evals = 100``, no gradient stop, so a
batch does not wait for a straggler that spends many evaluations on rejected trial points).
The loop calls ``minimize`` once per problem with an ``equinox.Module`` objective that
holds ``c_b`` (so it compiles once, not once per problem); the batch is one
``minimize_batch`` call. Both are timed after a warm-up call that compiles them, with the
best of ``--repeats`` timings. Also written: the agreement of the two (mean log10 of the
final objective of each path, and the largest difference per problem, which is
floating-point rounding amplified along the trajectories).

Writes ``bench_results/batch/results.csv`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import sys
import time
from pathlib import Path

FULL = [
    # (function, n, batch sizes)
    ("rosenbrock", 10, (1, 16, 64, 256)),
    ("rastrigin", 10, (1, 16, 64, 256)),
    ("rosenbrock", 100, (1, 16, 64)),
]
QUICK = [("rosenbrock", 10, (1, 16))]
METHODS = ("optimus", "lbfgs", "bfgs", "adam")
STEPS = 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small family, two batch sizes")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=2, help="timings per path (best is kept)")
    p.add_argument("--out", default="bench_results/batch")
    args = p.parse_args(argv)

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import optimus
    from optimus.functions import get

    class Shifted(eqx.Module):
        """``F(x - c + x*)``: the function with its minimum moved to ``c``."""

        fn: object = eqx.field(static=True)
        c: jax.Array

        def __call__(self, x):
            return self.fn(x - self.c)

    def family(name: str, n: int, size: int, seed: int):
        tf = get(name)
        lo, hi = tf.domain(n)
        rng = np.random.default_rng(seed)
        mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        c = mid + 0.5 * half * rng.uniform(-1, 1, (size, n))
        x0 = rng.uniform(lo, hi, (size, n))
        xstar = tf.minimizer(n)

        def fn(z):
            return tf.fn(z + jnp.asarray(xstar, z.dtype))

        def batched(x, cb):
            return fn(x - cb)

        return (
            fn,
            batched,
            jnp.asarray(c, jnp.float32),
            jnp.asarray(x0, jnp.float32),
            (lo, hi),
        )

    def run_loop(fn, c, x0, kw):
        return [optimus.minimize(Shifted(fn, c[b]), x0[b], **kw).fun for b in range(len(c))]

    def timed(call, repeats):
        best, out = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = call()
            jax.block_until_ready(jax.tree.leaves(out))
            best = min(best, time.perf_counter() - t0)
        return best, out

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    cases = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    for name, n, sizes in cases:
        for size in sizes:
            fn, batched, c, x0, box = family(name, n, size, seed=size * 1000 + n)
            for method in methods:
                kw = dict(method=method, steps=STEPS, max_evals=STEPS, bounds=box, gtol=0.0)
                if method == "adam":
                    kw["options"] = {"learning_rate": 0.1}

                loop = functools.partial(run_loop, fn, c, x0, kw)
                batch = functools.partial(optimus.minimize_batch, batched, x0, (c,), **kw)
                loop()  # compile
                t0 = time.perf_counter()
                batch()
                compile_batch = time.perf_counter() - t0
                t_loop, funs_loop = timed(loop, args.repeats)
                t_batch, res = timed(batch, args.repeats)
                lf_loop = np.log10(np.maximum(np.asarray(funs_loop, np.float64), 1e-30))
                lf_batch = np.log10(np.maximum(np.asarray(res.fun, np.float64), 1e-30))
                row = dict(
                    function=name,
                    n=n,
                    batch=size,
                    method=method,
                    loop_s=round(t_loop, 4),
                    batch_s=round(t_batch, 4),
                    loop_ms_per_problem=round(1e3 * t_loop / size, 3),
                    batch_ms_per_problem=round(1e3 * t_batch / size, 3),
                    speedup=round(t_loop / t_batch, 2),
                    batch_first_call_s=round(compile_batch, 2),
                    mean_log10_loop=round(float(lf_loop.mean()), 3),
                    mean_log10_batch=round(float(lf_batch.mean()), 3),
                    max_abs_diff_log10=round(float(np.max(np.abs(lf_loop - lf_batch))), 3),
                    batch_success=int(np.sum(res.success)),
                    batch_mean_nfev=round(float(np.mean(res.nfev)), 1),
                    batch_max_nfev=int(np.max(res.nfev)),
                )
                rows.append(row)
                print(
                    f"{name:10s} n={n:4d} B={size:4d} {method:8s} loop {t_loop:7.3f}s "
                    f"batch {t_batch:7.3f}s x{row['speedup']:6.2f}  log10 f "
                    f"{row['mean_log10_loop']:8.3f} / {row['mean_log10_batch']:8.3f}",
                    flush=True,
                )
    total = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# `minimize_batch` against a loop of `minimize` calls",
        "",
        f"`scripts/bench_batch.py{' --quick' if args.quick else ''}`, {total:.0f} s, on "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} logical CPUs, "
        f"JAX {jax.__version__} ({jax.default_backend()}), float32. Each problem: "
        f"{STEPS} objective+gradient evaluations (`steps = max_evals`), no gradient stop, "
        "bounds = the function's box; its own optimum "
        "(uniform in the central half of the box) and start (uniform in the box). Times are "
        f"the best of {args.repeats} warm calls (compiled); `first call` is the batch's "
        "first call, compilation included. Adam at learning rate 0.1.",
        "",
        "| function | n | B | method | loop ms/problem | batch ms/problem | speed-up | batch "
        "first call s | mean log10 f loop / batch | largest per-problem difference | "
        "batch successes | evaluations per problem, mean / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['function']} | {r['n']} | {r['batch']} | {r['method']} | "
            f"{r['loop_ms_per_problem']} | {r['batch_ms_per_problem']} | {r['speedup']}× | "
            f"{r['batch_first_call_s']} | {r['mean_log10_loop']} / {r['mean_log10_batch']} | "
            f"{r['max_abs_diff_log10']} | {r['batch_success']}/{r['batch']} | "
            f"{r['batch_mean_nfev']} / {r['batch_max_nfev']} |"
        )
    lines += [
        "",
        "The two paths evaluate the same objectives, but XLA orders a batched reduction "
        "differently from an unbatched one, so iterates differ in the last bits from the "
        "first step on; the differences stay at rounding on smooth problems and can move a "
        "multimodal run to another basin (the last columns show how much that changes the "
        "batch's mean).",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print(f"wrote {out / 'results.csv'} and {out / 'report.md'} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
