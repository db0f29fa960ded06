#!/usr/bin/env python
"""Meta-training at accelerator scale: throughput, gradient signal and a large-population run.

    python scripts/bench_accelerator.py --out DIR             # on a GPU (about 8 minutes)
    python scripts/bench_accelerator.py --out DIR --tiny      # smoke test of every stage on CPU

The shipped models are meta-trained with 64 antithetic pairs on 2 CPU cores, and
``bench_results/pes_snr.md`` shows that one such estimate at the shipped ``optimus`` weights is
almost pure noise. This script asks, on whatever JAX's default backend is, whether a much
larger population changes that. Each stage has its own time budget and is skipped, with the
error in the report, if it fails, so one failing stage does not cost the others:

1. **throughput**: outer steps and inner task-steps per second of the shipped ``optimus``
   config's PES outer step for several population sizes (:func:`optimus.meta.throughput.measure`);
2. **signal**: the signal fraction of antithetic-ES estimates over full 100-step unrolls with
   a large population (the statistics of ``scripts/pes_snr.py``), for all meta-parameters and
   for the global head alone;
3. **train**: two fine-tunes of the shipped ``optimus`` with PES, the same outer steps and
   learning rate, one with the large population and one with the shipped 64 pairs, validated
   on the shipped config's 128 validation problems every ``--eval-every`` steps.

Writes ``DIR/accelerator.md``, ``DIR/accelerator.json`` and, per training run, its
``log.csv`` and best meta-parameters (``.npz`` + model card) under ``DIR/train-PAIRS/``. Matrix
products run at full float32 precision (``jax_default_matmul_precision = "highest"``) so that
the weights behave the same on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def stage_throughput(args, report: dict) -> None:
    import jax

    from optimus.meta.throughput import measure

    rows = report.setdefault("throughput", [])
    for pairs in _ints(args.throughput_pairs):
        r = measure(str(ROOT / args.config), [f"estimator.num_pairs={pairs}"], repeats=3)
        r.pop("devices")
        rows.append(r)
        print(
            f"pairs {pairs:6d}: {r['inner_steps_per_s']:12.0f} inner steps/s, "
            f"{r['outer_steps_per_s']:.2f} outer steps/s, compile {r['compile_s']:.0f} s",
            flush=True,
        )
        jax.clear_caches()


def stage_signal(args, report: dict) -> None:
    import jax

    sys.path.insert(0, str(ROOT / "scripts"))
    from pes_snr import _stats

    from optimus.meta.pes import es_estimate
    from optimus.meta.tasks import make_task
    from optimus.meta.train import load_config
    from optimus.pretrained import load_pretrained

    cfg = load_config(str(ROOT / args.config))
    pairs = args.signal_pairs
    rows = report.setdefault("signal", [])
    for label, trainable in (("glob_head only", ("glob_head",)), ("all parameters", ())):
        task, theta = make_task(load_pretrained("optimus"), cfg.tasks, trainable)
        es = jax.jit(
            lambda th, k, task=task: es_estimate(
                task, th, k, sigma=cfg.estimator.sigma, num_pairs=pairs, horizon=cfg.tasks.horizon
            )[0]
        )
        root = jax.random.key(2026)
        t0 = time.perf_counter()
        draws = [jax.block_until_ready(es(theta, jax.random.fold_in(root, 0)))]
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(1, args.estimates):
            draws.append(jax.block_until_ready(es(theta, jax.random.fold_in(root, i))))
        per = (time.perf_counter() - t0) / max(args.estimates - 1, 1)
        s = _stats(draws)
        need = pairs * s["var"] / s["signal"] if s["signal"] > 0 else float("inf")
        rows.append(
            dict(
                params=label,
                count=int(theta.size),
                pairs=pairs,
                estimates=args.estimates,
                seconds_per_estimate=per,
                compile_s=compile_s,
                pairs_for_half=need,
                **s,
            )
        )
        print(label, rows[-1], flush=True)
        jax.clear_caches()


def stage_train(args, report: dict, out: Path) -> None:
    from optimus.meta.train import load_config, train

    rows = report.setdefault("train", [])
    for pairs in _ints(args.train_pairs):
        overrides = [f"estimator.num_pairs={pairs}", f"outer.steps={args.train_steps}"]
        if not args.from_scratch:
            overrides += [
                'outer.init_from="optimus"',
                f"outer.learning_rate={args.lr}",
                "outer.warmup_steps=10",
            ]
        overrides += [
            f"run.eval_every={args.eval_every}",
            f"run.checkpoint_every={args.train_steps}",
            f"run.max_minutes={args.train_minutes}",
        ]
        cfg = load_config(str(ROOT / args.config), overrides)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            path = train(cfg, Path(tmp), progress=False)
            wall = time.time() - t0
            dest = out / f"train-{pairs}"
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("log.csv", path.name, path.with_suffix(".json").name):
                shutil.copy(Path(tmp) / f, dest / f)
        log = (dest / "log.csv").read_text().splitlines()
        vals = [
            (int(r.split(",")[0]), float(v))
            for r in log[1:]
            if (v := dict(zip(log[0].split(","), r.split(","), strict=False)).get("val_loss"))
        ]
        card = json.loads((dest / path.with_suffix(".json").name).read_text())
        rows.append(
            dict(
                pairs=pairs,
                overrides=overrides,
                wall_s=wall,
                val=vals,
                outer_steps=card["outer_steps"],
                best_val=card["best_val_loss"],
            )
        )
        print(
            f"train pairs={pairs}: {card['outer_steps']} steps in {wall:.0f} s, val {vals}",
            flush=True,
        )


def _section(title: str, intro: list[str], header: list[str], rows: list[str]) -> list[str]:
    """A Markdown section: title, intro lines, and a table of pre-joined rows."""
    return [
        f"## {title}",
        "",
        *intro,
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *(f"| {r} |" for r in rows),
        "",
    ]


def write_report(report: dict, out: Path) -> None:
    (out / "accelerator.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    L = [
        "# Meta-training at accelerator scale",
        "",
        f"Generated by `scripts/bench_accelerator.py` on {report['machine']}; config "
        f"`{report['config']}`; float32 with full-precision matrix products.",
        "",
    ]
    if report.get("throughput"):
        L += _section(
            "Throughput of the PES outer step",
            [],
            ["pairs × truncation", "outer steps/s", "inner task-steps/s", "compile (s)"],
            [
                f"{r['pairs']} × {r['truncation']} | {r['outer_steps_per_s']:.2f} | "
                f"{r['inner_steps_per_s']:.0f} | {r['compile_s']:.0f}"
                for r in report["throughput"]
            ],
        )
    if report.get("signal"):
        L += _section(
            "Signal in one ES estimate (full 100-step unrolls, shipped `optimus` weights)",
            [
                "Statistics as in `bench_results/pes_snr.md` (signal fraction = "
                "||g||² / E||ĝ||², 1 = noise-free).",
                "",
            ],
            ["parameters", "count", "pairs", "estimates", "s per estimate", "mean cosine"]
            + ["signal fraction", "pairs for 1/2"],
            [
                f"{r['params']} | {r['count']} | {r['pairs']} | {r['estimates']} | "
                f"{r['seconds_per_estimate']:.2f} | {r['cos']:+.3f} | {r['frac']:.3f} | "
                f"{r['pairs_for_half']:.3g}"
                for r in report["signal"]
            ],
        )
    if report.get("train"):
        L += [
            "## PES meta-training runs (validation meta-loss, lower is better)",
            "",
            "| pairs | outer steps | wall (s) | first validation | best | last |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["train"]:
            v = r["val"]
            L.append(
                f"| {r['pairs']} | {r['outer_steps']} | {r['wall_s']:.0f} | "
                f"{v[0][1]:.4f} (step {v[0][0]}) | {r['best_val']:.4f} | "
                f"{v[-1][1]:.4f} (step {v[-1][0]}) |"
            )
        L += ["", "Overrides: `" + " ".join(report["train"][0]["overrides"][1:]) + "`", ""]
    for name, err in report.get("errors", {}).items():
        L += [f"**Stage {name} failed:**", "", "```", err.strip()[-1500:], "```", ""]
    (out / "accelerator.md").write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results/accelerator")
    p.add_argument("--config", default="configs/optimus.toml")
    p.add_argument("--stages", default="throughput,train,signal")
    p.add_argument("--throughput-pairs", default="64,1024,8192")
    p.add_argument("--signal-pairs", type=int, default=8192)
    p.add_argument("--estimates", type=int, default=6)
    p.add_argument("--train-pairs", default="8192,64")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--train-minutes", type=float, default=2.5)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="train from a fresh initialisation with the config's schedule (no init_from)",
    )
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (CPU)")
    args = p.parse_args(argv)
    if args.tiny:
        args.throughput_pairs, args.signal_pairs, args.estimates = "4,8", 4, 3
        args.train_pairs, args.train_steps, args.eval_every = "8,4", 4, 2

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = jax.devices()[0]
    report: dict = {
        "machine": f"{dev.device_kind} ({jax.default_backend()}), {platform.machine()}, "
        f"jax {jax.__version__}",
        "config": args.config,
        "errors": {},
    }
    print(report["machine"], flush=True)
    stages = {
        "throughput": lambda: stage_throughput(args, report),
        "signal": lambda: stage_signal(args, report),
        "train": lambda: stage_train(args, report, out),
    }
    for name in args.stages.split(","):
        t0 = time.time()
        try:
            stages[name]()
        except Exception:
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], flush=True)
        report.setdefault("stage_s", {})[name] = round(time.time() - t0, 1)
        write_report(report, out)
        print(f"stage {name}: {time.time() - t0:.0f} s", flush=True)
    print((out / "accelerator.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
