#!/usr/bin/env python
"""Ablation of the quasi-Newton direction fed to the learned optimizer (``NetConfig.secant``).

    .venv/bin/python scripts/ablation_secant.py            # ~2 min on 2 cores

Untrained networks (initialised as a quasi-Newton method with unit steps inside the
acceptance layer, see ``optimus.nets.optimus``), identical except for where ``q = H g``
comes from:

* ``lbfgs``: two-loop recursion over the last 5 secant pairs (``H0 = gamma_k I`` rescaled at
  every step);
* ``bfgs-unscaled``: dense BFGS with ``H0 = gamma_1 I`` from the first pair and no later
  rescaling (the textbook update; patched in here for the ablation only);
* ``bfgs-ol``: dense BFGS with Oren-Luenberger self-scaling, ``H <- tau H`` with
  ``tau = s^T y / y^T H y`` before every update (patched in here for the ablation only);
* ``bfgs-up``: scaled up only, ``tau = max(1, s^T y / y^T H y)`` (patched in);
* ``bfgs``: the asymmetric scaling of ``optimus.nets.features.bfgs_inverse_update`` (the
  shipped ``optimus`` model): up as ``bfgs-up``, down only when ``s^T y / y^T H y < 0.01``.

Transformed problems (shift + rotation), box-normalised coordinates, 100 evaluations, mean
log10 of the best objective over the seeds. Writes ``bench_results/ablation_secant.md`` and
``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

FUNCTIONS = (
    "sphere",
    "quadratic",
    "rosenbrock",
    "dixon_price",
    "powell",
    "rastrigin",
    "levy",
    "ackley",
    "griewank",
)
VARIANTS = ("lbfgs", "bfgs-unscaled", "bfgs-ol", "bfgs-up", "bfgs")


def _patched_update(scaling: str):
    """Dense BFGS with another scaling: ``"none"`` (H0 = (s^T y / y^T y) I at the first pair
    only), ``"ol"`` (Oren-Luenberger, both ways) or ``"up"`` (up only)."""
    import jax.numpy as jnp

    def update(H, s, y):
        sy = jnp.vdot(s, y)
        yy = jnp.vdot(y, y)
        keep = sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * yy)
        safe_sy = jnp.where(keep, sy, 1.0)
        fresh = jnp.trace(H) == 0
        yv = jnp.vdot(y, H @ y)
        ratio = safe_sy / jnp.where(yv > 0, yv, safe_sy)
        tau = {"none": 1.0, "ol": ratio, "up": jnp.maximum(ratio, 1.0)}[scaling]
        gamma = safe_sy / jnp.where(keep, yy, 1.0)
        H0 = jnp.where(fresh, gamma * jnp.eye(H.shape[0], dtype=H.dtype), tau * H)
        rho = 1.0 / safe_sy
        v = H0 @ y
        c = rho + rho * rho * jnp.vdot(y, v)
        Hn = H0 - rho * (jnp.outer(v, s) + jnp.outer(s, v)) + c * jnp.outer(s, s)
        return jnp.where(keep, Hn, H)

    return update


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="8,32")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", default="bench_results")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    import optimus
    from optimus.functions import make_problem
    from optimus.nets import NetConfig, build_net
    from optimus.nets import features as F

    original = F.bfgs_inverse_update
    rows = []
    t0 = time.time()
    for variant in VARIANTS:
        secant = "lbfgs" if variant == "lbfgs" else "bfgs"
        cfg = NetConfig(monotone=True, attention="induced", secant=secant)
        net = build_net(cfg, jax.random.key(0))
        patches = {"bfgs-unscaled": "none", "bfgs-ol": "ol", "bfgs-up": "up"}
        F.bfgs_inverse_update = (
            _patched_update(patches[variant]) if variant in patches else original
        )
        # the networks of the two dense variants are equal pytrees: without this, jit would
        # reuse the solve compiled with the other update
        jax.clear_caches()
        try:
            for n in (int(d) for d in args.dims.split(",")):
                for fn in FUNCTIONS:
                    if fn == "powell" and n % 4:
                        continue
                    vals = []
                    for s in range(args.seeds):
                        key = jax.random.fold_in(jax.random.key(0), 1000 + s)
                        kp, kx = jax.random.split(key)
                        prob = make_problem(fn, n, variant="transformed", key=kp)
                        z0 = prob.to_unit(prob.sample_x0(kx))
                        res = optimus.minimize(
                            prob.unit_objective,
                            z0,
                            method="optimus",
                            params=net,
                            steps=100,
                            max_evals=100,
                            gtol=0.0,
                        )
                        vals.append(float(np.log10(max(float(res.fun), 1e-30))))
                    rows.append((variant, fn, n, float(np.mean(vals)), float(np.std(vals))))
                    print(f"{variant:14s} {fn:12s} n={n:3d} {rows[-1][3]:8.2f}", flush=True)
        finally:
            F.bfgs_inverse_update = original
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ablation_secant.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "function", "n", "mean_log10", "std_log10"])
        w.writerows(rows)
    table = {(v, f, n): m for v, f, n, m, _ in rows}
    dims = sorted({n for _, _, n, _, _ in rows})
    lines = [
        "# Ablation: where the learned optimizer's quasi-Newton direction comes from",
        "",
        f"Generated by `scripts/ablation_secant.py` in {time.time() - t0:.0f} s. Untrained "
        "networks (identical weights, key 0), transformed problems, 100 evaluations, "
        f"mean log10 of the best objective over {args.seeds} seeds (lower is better).",
        "",
        "| function | n | " + " | ".join(VARIANTS) + " |",
        "|---|---|" + "---|" * len(VARIANTS),
    ]
    for n in dims:
        for fn in FUNCTIONS:
            if (VARIANTS[0], fn, n) not in table:
                continue
            vals = [table[(v, fn, n)] for v in VARIANTS]
            best = min(vals)
            cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in vals]
            lines.append(f"| {fn} | {n} | " + " | ".join(cells) + " |")
    means = [np.mean([m for v2, _, _, m, _ in rows if v2 == v]) for v in VARIANTS]
    lines.append("| **mean** | | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    (out / "ablation_secant.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'ablation_secant.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
