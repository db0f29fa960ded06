#!/usr/bin/env python
"""How far is the physics goal? Evaluations that Adam at every learning rate, BFGS, L-BFGS and
the learned model need to reach the goal's target on the first windows of the test clips.

    .venv/bin/python scripts/physics_goal_gap.py --out bench_results/physics/goal_gap
    # choosing a variant on validation windows (24 problems) instead of the test clips:
    .venv/bin/python scripts/rule_variants.py optimus-humanoid --out runs/variants/step \
        --variant s15:step_factor=1.5 --variant s2:step_factor=2
    .venv/bin/python scripts/physics_goal_gap.py --splits val --clips 4 --windows 6 \
        --learned optimus-humanoid,optimus-humanoid-s15,optimus-humanoid-s2 \
        --params-dir runs/variants/step --out bench_results/physics/goal_gap_val

The goal of the physics issue: reach (1 + eps) times the best baseline's 50-evaluation loss
within 10 evaluations. The windows and the target are those of ``optimus bench physics``
(per first window, built by ``bench.first_window``: 1.05 times the lowest final loss of Adam
at the learning rate tuned on validation windows, BFGS and L-BFGS). This script adds Adam at
a grid of learning rates and an *oracle* that picks, per window and after the fact, the
learning rate that is best at evaluation 10: an optimistic bound on what a fixed-rate Adam
could do, and a yardstick for how much faster than first-order a learned optimizer would
have to be. First windows only: they are the identical problem for every method (later
windows start from each method's own reconstruction). Writes ``report.md`` and ``windows.csv``.
The (window, method) runs go to ``--jobs`` worker processes, as in ``optimus bench physics``
(:func:`optimus.physics.bench.worker_pool`); the results do not depend on their number.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

LRS = (0.003, 0.01, 0.02, 0.03, 0.05, 0.1)
AT = 10  # the goal's budget


def main(argv: list[str] | None = None) -> int:
    from optimus.physics import bench as PB

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=6, help="clips per split")
    p.add_argument(
        "--splits",
        default="test,test_mismatch",
        help="comma-separated data splits; 'val' or 'train' to choose a variant without "
        "looking at the test clips",
    )
    p.add_argument(
        "--windows",
        type=int,
        default=1,
        help="windows per clip: the first (as in the benchmark) and, for more than 1, the "
        "next ones started from the ground-truth state (independent problems)",
    )
    p.add_argument("--k", type=int, default=4, help="keyframes per window")
    p.add_argument("--evals", type=int, default=50)
    PB.add_learned_arguments(p, "optimus-humanoid")
    p.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS), help="Adam grid")
    PB.add_jobs_argument(p)
    args = p.parse_args(argv)
    if args.evals < AT:
        p.error(f"--evals must be at least {AT} (the goal's budget)")

    from optimus.physics import motion as MO

    t0 = time.perf_counter()
    cache_dir = PB.enable_compilation_cache()
    data = MO.load(None)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in splits:
        if split not in data:
            p.error(f"unknown split {split!r}; the dataset has {', '.join(data)}")
    learned = [m.strip() for m in args.learned.split(",") if m.strip()]
    nets, _, runs_as = PB.load_weights(dict(methods=learned, params_dir=args.params_dir))
    lrs = [float(v) for v in args.lrs.split(",")]
    methods = [f"adam@{lr:g}" for lr in lrs] + ["bfgs", "lbfgs", *learned]
    with PB.goal_pool(data, args.k, args.jobs, cache_dir) as pool:
        settings = dict(evals=args.evals, ks=[args.k], val_windows=4)
        tuned = PB.tune_adam(data, settings, print, pool)
        todo = [
            (m, "adam", dict(lr=float(m[5:])))
            if m.startswith("adam@")
            else (m, runs_as[m], dict(params=nets[m]))
            if m in nets
            else (m, m, {})
            for m in methods
        ]
        if f"adam@{tuned:g}" not in methods:
            todo.append((f"adam@{tuned:g}", "adam", dict(lr=tuned)))
        windows = []  # (key, clip, w)
        for split in splits:
            for i in range(min(args.clips, len(data[split]["qpos"]))):
                clip = {k: v[i] for k, v in data[split].items()}
                for key, w in PB.goal_window_keys(clip, f"{split}[{i}]", args.windows):
                    windows.append((key, clip, w))
        tasks = [
            (clip, w, args.k, method, args.evals, kw.get("lr"), None, kw.get("params"))
            for _, clip, w in windows
            for _, method, kw in todo
        ]
        keys = [key for key, _, _ in windows for _ in todo]
        solved = PB.run_goal_tasks(pool, tasks, keys, t0)
    rows = []  # (window, curves, finals)
    for j, (key, _, _) in enumerate(windows):
        mine = solved[j * len(todo) : (j + 1) * len(todo)]
        curves = {m: c for (m, _, _), (c, _) in zip(todo, mine, strict=True)}
        finals = {m: f for (m, _, _), (_, f) in zip(todo, mine, strict=True)}
        rows.append((key, curves, finals))

    # the bench's target: (1 + eps) x the lowest final loss of the baselines
    baseline_names = [f"adam@{tuned:g}", "bfgs", "lbfgs"]
    table, skipped = [], []
    for key, curves, finals in rows:
        # exactly summarize()'s target: the baselines' final losses (objective at res.x)
        target = (1 + PB.EPS) * min(finals[b] for b in baseline_names)
        if not np.isfinite(target):
            skipped.append(key)  # no baseline ended finite: no target
            continue
        reach = {m: PB._evals_to_reach(c, target) for m, c in curves.items()}
        at = {m: float(c[AT - 1] / target) for m, c in curves.items()}
        adam_lrs = [m for m in curves if m.startswith("adam@")]
        oracle_m = min(adam_lrs, key=lambda m: curves[m][AT - 1])
        reach["adam-oracle"] = reach[oracle_m]
        at["adam-oracle"] = at[oracle_m]
        table.append((key, target, reach, at, oracle_m))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [*curves.keys(), "adam-oracle"]
    with open(out / "windows.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["window", "target", "method", "evals_to_reach", f"loss_at_{AT}_over_target"])
        for key, target, reach, at, _ in table:
            for m in names:
                w.writerow([key, f"{target:.6g}", m, reach[m], f"{at[m]:.6g}"])
    lines = [
        "# How far is the physics goal"
        + (
            " (first windows)"
            if args.windows == 1
            else f" ({', '.join(splits)} windows from ground-truth states)"
        ),
        "",
        f"Generated by `scripts/physics_goal_gap.py` in {time.perf_counter() - t0:.0f} s: "
        + (
            f"first windows of {args.clips} + {args.clips} test clips (nominal and "
            "model-mismatch splits)"
            if splits == ["test", "test_mismatch"] and args.windows == 1
            else f"{len(table)} windows of splits {', '.join(splits)} (up to {args.clips} clips, "
            f"{args.windows} windows each, later windows from the ground-truth state)"
        )
        + f", K = {args.k}, {args.evals} evaluations per run. Target per window: "
        f"{1 + PB.EPS:g} x the lowest final loss of Adam (learning rate {tuned:g}, tuned on "
        "validation windows as in `optimus bench physics`), BFGS and L-BFGS. `adam-oracle`: "
        f"per window, the grid learning rate that is best at evaluation {AT}, chosen after "
        "the fact (an optimistic bound: it also selects on the noise of that evaluation)."
        + (
            f" Learned weights from `{args.params_dir}` where named there."
            if args.params_dir
            else ""
        ),
        "",
        f"| method | median evaluations to reach | windows reached | median loss at "
        f"evaluation {AT} / target | windows within target at {AT} |",
        "|---|---|---|---|---|",
    ]
    for m in names:
        r = np.array([t[2][m] for t in table])
        a = np.array([t[3][m] for t in table])
        lines.append(
            f"| {m} | {np.median(r):.0f} | {int(np.isfinite(r).sum())} of {len(r)} | "
            f"{np.median(a):.3f} | {int((a <= 1).sum())} of {len(a)} |"
        )
    picks = [t[4] for t in table]
    lines += [
        "",
        *([f"Skipped (no baseline ended finite): {', '.join(skipped)}", ""] if skipped else []),
        "Oracle's learning rate per window: "
        + ", ".join(f"{m[5:]} ({picks.count(m)})" for m in sorted(set(picks))),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
