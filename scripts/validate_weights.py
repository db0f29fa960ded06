#!/usr/bin/env python
"""Validation meta-loss of several weight files on this machine, on a larger validation set.

    .venv/bin/python scripts/validate_weights.py optimus path/to/other.npz ... \\
        [--config configs/optimus.toml] [--tasks 512] [--seeds 3] [--out FILE.md] \\
        [--set SECTION.KEY=VALUE ...]

Each argument is a shipped model name or a ``.npz`` written by ``optimus.save_params``. Every
network is scored with the meta-loss of ``Trainer.validate`` (mean log10 of the loss relative
to the start over the horizon, lower is better) on ``--seeds`` validation sets of ``--tasks``
problems each, drawn from the config's task distribution with seeds ``eval_seed + i``; all
networks see the same problems. Each network runs with its own architecture and update
rule (the ``config`` of its model card replaces the config file's ``[model]`` section);
``--set`` overrides the config after that, for every network (e.g.
``tasks.meta_loss="best"`` or ``model.accept_window=10``; only update-rule fields of
``[model]`` can differ from the weights'). The 128-problem validation of
a training run moves by about 0.05–0.1 between checkpoints and between machines (the unrolls
are chaotic), so compare weights here, on one machine and one larger set, rather than by the
numbers in their logs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+", help="shipped model names or .npz files")
    p.add_argument("--config", default="configs/optimus.toml")
    p.add_argument("--tasks", type=int, default=512)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="", help="also write a Markdown table here")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)

    import dataclasses
    import json

    import jax
    import numpy as np

    from optimus.meta.tasks import make_task
    from optimus.meta.train import Trainer, load_config
    from optimus.pretrained import available, load_pretrained
    from optimus.serialization import load_params

    t0 = time.time()
    base = load_config(args.config, args.set)
    seeds = range(base.run.eval_seed, base.run.eval_seed + args.seeds)
    rows = []
    for w in args.weights:
        net = load_pretrained(w) if w in available() else load_params(w)[0]
        own = [f"model.{k}={json.dumps(v)}" for k, v in dataclasses.asdict(net.config).items()]
        vals = []
        for s in seeds:
            cfg = load_config(
                args.config,
                [*own, *args.set, f"run.eval_tasks={args.tasks}", f"run.eval_seed={s}"],
            )
            trainer = Trainer(cfg)
            _, theta = make_task(net, cfg.tasks, ())
            if theta.shape != trainer.theta0.shape:
                raise SystemExit(f"{w}: its parameters do not fit the config's network")
            vals.append(float(jax.block_until_ready(trainer.validate(theta))))
        rows.append((w, vals))
        print(f"{w}: mean {np.mean(vals):+.4f}  per set {', '.join(f'{v:+.4f}' for v in vals)}")
    if args.out:
        lines = [
            f"Validation meta-loss (lower is better) on {args.seeds} sets of {args.tasks} "
            f"problems from `{args.config}`'s task distribution, on {jax.devices()[0].device_kind}"
            f" ({jax.default_backend()}); `scripts/validate_weights.py`, {time.time() - t0:.0f} s"
            + "".join(f", `--set {o}`" for o in args.set)
            + ".",
            "",
            "| weights | mean | per set |",
            "|---|---|---|",
        ]
        lines += [
            f"| {w} | {np.mean(v):+.4f} | {', '.join(f'{x:+.4f}' for x in v)} |" for w, v in rows
        ]
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
