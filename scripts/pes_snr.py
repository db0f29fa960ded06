#!/usr/bin/env python
"""How much signal is in one meta-gradient estimate at the shipped Optimus weights?

    .venv/bin/python scripts/pes_snr.py            # ~4 min on 2 cores

Draws ``R`` independent estimates of the meta-gradient at the shipped ``optimus`` weights
with the shipped training configuration (``configs/optimus.toml``: 64 antithetic pairs,
sigma = 0.01, the test-function task family) and measures how consistent they are:

* the mean cosine between two independent estimates;
* the signal fraction :math:`\\|g\\|^2 / E\\|\\hat g\\|^2` of one estimate, with the squared
  norm of the true (smoothed) gradient estimated without bias as
  :math:`\\|\\bar g\\|^2 - \\operatorname{tr}\\hat\\Sigma / R` (clipped at 0);
* the number of antithetic pairs one estimate would need for a signal fraction of 1/2
  (variance falls as 1/pairs);
* the fraction of meta-parameters whose mean over the ``R`` estimates differs from 0 by more
  than two standard errors (5 % expected by chance).

Estimators: antithetic ES over full 100-step unrolls from fresh problems (the unbiased
reference), PES over 20-step truncations (each draw from its own particle population,
after one horizon of truncations at the same theta) and, for comparison, TBPTT over one
20-step truncation of 64 fresh staggered particles (``estimator.kind = "tbptt"``: exact
gradients of a different, short-horizon objective, so its "signal" is consistency, not the
direction of the full-horizon gradient; through these chaotic unrolls its draws are
heavy-tailed, which dominates the variance columns, so read its mean cosine). Two parameter
sets: all 45,590 meta-parameters and the global head alone (``outer.trainable =
["glob_head"]``, 216). Writes ``bench_results/pes_snr.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _stats(est):
    import numpy as np

    est = np.asarray(est, np.float64)
    r = est.shape[0]
    mean = est.mean(axis=0)
    var = est.var(axis=0, ddof=1)
    unit = est / np.linalg.norm(est, axis=1, keepdims=True)
    cos = unit @ unit.T
    mean_cos = float((cos.sum() - r) / (r * (r - 1)))
    signal = max(float(mean @ mean - var.sum() / r), 0.0)
    frac = signal / float(np.mean(np.sum(est**2, axis=1)))
    t = np.abs(mean) / np.sqrt(var / r + 1e-300)
    return dict(
        cos=mean_cos, frac=frac, signal=signal, var=float(var.sum()), sig=float(np.mean(t > 2))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimates", type=int, default=24, help="independent estimates R")
    p.add_argument("--out", default="bench_results")
    args = p.parse_args(argv)

    import jax

    from optimus.meta.pes import es_estimate, pes_estimate, pes_init, tbptt_estimate
    from optimus.meta.tasks import make_task
    from optimus.meta.train import load_config
    from optimus.pretrained import load_pretrained

    t0 = time.time()
    cfg = load_config("configs/optimus.toml")
    est_cfg = cfg.estimator
    pairs = est_cfg.num_pairs
    rows = []
    for label, trainable in (("all parameters", ()), ("glob_head only", ("glob_head",))):
        task, theta = make_task(load_pretrained("optimus"), cfg.tasks, trainable)
        es = jax.jit(
            lambda th, k, task=task: es_estimate(
                task, th, k, sigma=est_cfg.sigma, num_pairs=pairs, horizon=cfg.tasks.horizon
            )[0]
        )
        pes = jax.jit(
            lambda th, s, k, task=task: pes_estimate(
                task, th, s, k, sigma=est_cfg.sigma, truncation=est_cfg.truncation
            )[:2]
        )
        root = jax.random.key(2026)
        es_draws = [es(theta, jax.random.fold_in(root, i)) for i in range(args.estimates)]
        pes_draws = []
        burn_in = cfg.tasks.horizon // est_cfg.truncation
        for i in range(args.estimates):
            # an independent particle population per draw, run for one horizon of
            # truncations first so that its accumulators xi have their working length
            key = jax.random.fold_in(root, 10_000 + i)
            state = pes_init(task, theta, key, pairs)
            for j in range(burn_in + 1):
                g, state = pes(theta, state, jax.random.fold_in(key, j))
            pes_draws.append(g)
        # TBPTT keeps no accumulators: fresh staggered particles are its working state
        tbptt = jax.jit(
            lambda th, s, k, task=task: tbptt_estimate(
                task, th, s, k, truncation=est_cfg.truncation
            )[0]
        )
        tbptt_draws = []
        for i in range(args.estimates):
            key = jax.random.fold_in(root, 30_000 + i)
            tbptt_draws.append(tbptt(theta, pes_init(task, theta, key, pairs), key))
        for name, draws in (
            ("ES, full 100-step unrolls", es_draws),
            ("PES, 20-step truncations", pes_draws),
            ("TBPTT, 20-step truncations (biased)", tbptt_draws),
        ):
            s = _stats(draws)
            # one estimate averages `pairs` pairs: Var(one pair) = pairs * var
            need = pairs * s["var"] / s["signal"] if s["signal"] > 0 else float("inf")
            rows.append((label, theta.size, name, s, need))
            print(label, name, s, f"pairs for signal 1/2: {need:.3g}", flush=True)
    lines = [
        "# Signal in one meta-gradient estimate at the shipped `optimus` weights",
        "",
        f"Generated by `scripts/pes_snr.py` in {time.time() - t0:.0f} s: {args.estimates} "
        f"independent estimates per row, {pairs} antithetic pairs each, sigma = "
        f"{est_cfg.sigma}, the shipped training task family (`configs/optimus.toml`). "
        "Signal fraction = ||g||^2 / E||g_hat||^2 of one estimate (1 = noise-free); "
        "'pairs for 1/2' = antithetic pairs one estimate would need for a signal fraction of "
        "1/2; 'params |t| > 2' = meta-parameters whose mean estimate is two standard errors "
        "from 0 (5 % by chance).",
        "",
        "| parameters | count | estimator | mean cosine of two estimates | signal fraction | "
        "pairs for 1/2 | params with \\|t\\| > 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, count, name, s, need in rows:
        lines.append(
            f"| {label} | {count} | {name} | {s['cos']:+.3f} | {s['frac']:.3f} | "
            f"{need:.3g} | {100 * s['sig']:.1f} % |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pes_snr.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'pes_snr.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
