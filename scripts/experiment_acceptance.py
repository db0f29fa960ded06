#!/usr/bin/env python
"""Experiment: an acceptance-layer option switched on for the *shipped* weights, which were
meta-trained without it: the step memory (``NetConfig.step_memory``) or the interpolating
backtracking (``NetConfig.backtrack = "interp"``).

    .venv/bin/python scripts/experiment_acceptance.py --set step_memory=true      # step_memory.md
    .venv/bin/python scripts/experiment_acceptance.py --set backtrack=interp      # backtrack.md

(~3-6 min each on 2 cores with a warm compilation cache). Two parts, each comparing the same
network as shipped and with the option:

* physics: the first window of every test and model-mismatch clip (from the benchmark's
  start state, ``optimus.physics.bench.clip_start``, K = 4, 50 evaluations), final window
  loss and rejected trial points, with BFGS / L-BFGS / Adam (lr 0.01) beside;
* test functions: transformed problems, n = 10, 30, 100, 5 seeds, 100 evaluations, mean
  log10 of the best objective.

A network is run here with a rule it was not trained with, so this only says whether
retraining with the option is worth it. Writes ``bench_results/<name>.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

EXCLUDED = ("perm",)  # overflows float32 beyond n ~ 16


OPTIONS = {"step_memory": ("memory", lambda v: v.lower() == "true"), "backtrack": ("interp", str)}


def _variants(names, field: str, value):
    from optimus.nets import with_config
    from optimus.pretrained import load_pretrained

    out = {}
    for name in names:
        net = load_pretrained(name)
        out[name] = net
        tag = name + "+" + OPTIONS[field][0]
        out[tag] = with_config(net, dataclasses.replace(net.config, **{field: value}))
    return out


def physics_part(nets, evals: int, lines: list[str]) -> None:
    import numpy as np

    from optimus.physics import bench as PB
    from optimus.physics import model as M
    from optimus.physics import motion

    PB.enable_compilation_cache()
    data = motion.load()
    dyn = M.model_arrays()
    rows = {}
    for split in ("test", "test_mismatch"):
        d = data[split]
        for i in range(len(d["qpos"])):
            clip = {k: v[i] for k, v in d.items()}
            obj = PB.first_window(clip, 4, dyn)
            for label, net in [*nets.items(), ("bfgs", None), ("lbfgs", None), ("adam", None)]:
                method = label.split("+")[0]
                lr = 0.01 if method == "adam" else None
                out = PB.solve_window(obj, method, evals, lr, params=net)
                rows.setdefault(label, []).append((out["final"], out["n_rejected"]))
    lines += [
        "## Physics: first windows of the test and mismatch clips",
        "",
        f"K = 4, {evals} evaluations, from the benchmark's start state (the true state; a "
        "mismatch clip's root height shifted so the nominal body stands on the floor); median over "
        f"{len(next(iter(rows.values())))} windows.",
        "",
        "| method | median final loss | median rejected trial points |",
        "|---|---|---|",
    ]
    for label, vals in rows.items():
        f = np.median([v[0] for v in vals])
        r = np.median([v[1] for v in vals])
        lines.append(f"| {label} | {f:.3f} | {r:.0f} |")
    lines.append("")


def functions_part(nets, seeds: int, lines: list[str]) -> None:
    import numpy as np

    from optimus.bench.run import final_log10
    from optimus.functions import NAMES, get

    functions = [name for name in NAMES if name not in EXCLUDED]
    dims = (10, 30, 100)
    table = {}
    for label, net in nets.items():
        for fn in functions:
            for n in dims:
                if n % get(fn).dim_multiple:
                    continue
                vals = [
                    final_log10(label.split("+")[0], fn, n, s, params=net) for s in range(seeds)
                ]
                table[(label, fn, n)] = float(np.mean(vals))
    labels = list(nets)
    lines += [
        "## Test functions (transformed, 100 evaluations)",
        "",
        f"Mean log10 of the best objective over {seeds} seeds (lower is better).",
        "",
        "| function | n | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for fn in functions:
        for n in dims:
            if (labels[0], fn, n) in table:
                vals = [table[(lab, fn, n)] for lab in labels]
                lines.append(f"| {fn} | {n} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    means = [np.mean([v for (lab, _, _), v in table.items() if lab == x]) for x in labels]
    lines.append("| **mean** | | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines.append("")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="optimus,optimus-noprecond")
    p.add_argument("--evals", type=int, default=50, help="evaluations per physics window")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="bench_results")
    p.add_argument("--set", default="step_memory=true", help="FIELD=VALUE of NetConfig")
    args = p.parse_args(argv)
    field, _, raw = args.set.partition("=")
    if field not in OPTIONS:
        p.error(f"--set: one of {', '.join(OPTIONS)}")
    tag, parse = OPTIONS[field]
    t0 = time.time()
    nets = _variants(args.models.split(","), field, parse(raw))
    body: list[str] = []
    physics_part(nets, args.evals, body)
    functions_part(nets, args.seeds, body)
    lines = [
        f"# Experiment: `{args.set}` in the acceptance layer, shipped weights",
        "",
        f"Generated by `scripts/experiment_acceptance.py --set {args.set}` in "
        f"{time.time() - t0:.0f} s (on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores). `NAME+{tag}` is the shipped network run with "
        f"`{args.set}`, a rule it was not meta-trained with.",
        "",
        *body,
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{field}.md").write_text("\n".join(lines))
    print(f"wrote {out / f'{field}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
