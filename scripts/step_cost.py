#!/usr/bin/env python
"""The learned optimizers' own cost per step, without the objective.

    .venv/bin/python scripts/step_cost.py --out bench_results/step_cost   # about 3 minutes

``optimus bench`` reports wall time per objective+gradient evaluation, which includes the
objective (a rotated test function at n = 1000 costs two passes over a 4 MB rotation) and the
host's dispatch. This script isolates the optimizer: the jitted model step
(:func:`optimus.optimizers.learned.model_update`, step acceptance included) of each shipped
learned model, ``--steps`` steps in one ``lax.scan`` on the sphere, whose gradient ``2 x``
costs nothing. Each (model, n) is compiled once and timed ``--repeats`` times; the table gives
the fastest and the median repeat in ms per step. ``optimus`` holds three n x n matrices
(preconditioner ``B``, BFGS ``H`` and SR1 ``H``): it is timed with them dense and in the
compact form that :func:`optimus.minimize` uses when n > 8 x the budget
(``NetConfig.qn_memory`` = ``--steps``, exact for that many steps; ``optimus.nets.compact``),
the dense form only up to ``--dense-max``. The size of the optimizer's state goes beside the
times. The CPU, JAX version and date go into the report, since the numbers are only
comparable within one run. Writes ``step_cost.csv`` and ``step_cost.md``.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from datetime import UTC, datetime
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def has_dense_matrices(name: str) -> bool:
    """Whether the shipped model ``name`` keeps n x n matrices (so it has a compact form)."""
    import optimus
    from optimus.optimizers.learned import uses_dense_bfgs, uses_preconditioner

    net = optimus.load_pretrained(name)
    compactable = getattr(net.config, "bfgs_h0", "selfscale") != "rescale"  # dense only
    return compactable and (uses_preconditioner(net) or uses_dense_bfgs(net))


def time_model(
    name: str, n: int, steps: int, repeats: int, memory: int = 0
) -> tuple[float, float, float, float]:
    """``(compile_s, fastest, median, state_mb)``: ms per step of the shipped model ``name``
    at ``n`` (``memory`` > 0: its matrices in compact form with room for ``memory``
    updates) and the size of its state in MB."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import optimus
    from optimus.nets import with_rule
    from optimus.optimizers.learned import model_init, model_update

    net = optimus.load_pretrained(name)
    if memory:
        net = with_rule(net, qn_memory=memory)
    params, static = eqx.partition(net, eqx.is_array)
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=n), jnp.float32)
    state = model_init(net, x0)
    state_mb = sum(a.nbytes for a in jax.tree.leaves(state)) / 1e6

    @jax.jit
    def run(params, state):
        model = eqx.combine(params, static)

        def body(st, _):
            return model_update(model, st, jnp.sum(st.x**2), 2 * st.x), None

        return jax.lax.scan(body, state, None, length=steps)[0]

    t = time.perf_counter()
    jax.block_until_ready(run(params, state))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(params, state))
        times.append(1e3 * (time.perf_counter() - t) / steps)
    return compile_s, float(np.min(times)), float(np.median(times)), state_mb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="optimus,optimus-noprecond,mlp")
    p.add_argument("--dims", default="100,300,1000,3000")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--dense-max", type=int, default=3000, help="largest n at which dense matrices are timed"
    )
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        dims = [int(d) for d in args.dims.split(",") if d.strip()]
    except ValueError:
        p.error(f"--dims must be comma-separated integers, got {args.dims!r}")
    if not dims or min(dims) < 1:
        p.error("--dims must be positive integers")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be positive")
    from optimus.pretrained import available

    unknown = [m for m in models if m not in available()]
    if unknown:
        p.error(f"unknown models {unknown}; shipped: {', '.join(available())}")

    import jax

    # (column label, model, qn_memory): the models with n x n matrices also in compact form
    columns = []
    dense_models = {m for m in models if has_dense_matrices(m)}
    for m in models:
        if m in dense_models:
            columns += [(f"{m} (dense)", m, 0), (f"{m} (compact)", m, args.steps)]
        else:
            columns.append((m, m, 0))
    rows = []
    t0 = time.perf_counter()
    for n in dims:
        for label, m, memory in columns:
            if memory == 0 and m in dense_models and n > args.dense_max:
                continue
            compile_s, fastest, median, state_mb = time_model(
                m, n, args.steps, args.repeats, memory
            )
            rows.append(
                dict(
                    model=m,
                    form="compact" if memory else "dense",
                    n=n,
                    fastest_ms=fastest,
                    median_ms=median,
                    compile_s=compile_s,
                    state_mb=state_mb,
                )
            )
            print(f"[{time.perf_counter() - t0:6.0f}s] {label} n={n}: {fastest:.3f} ms", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "step_cost.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Cost of a learned optimizer's own step (objective excluded)",
        "",
        f"Generated {when} by `scripts/step_cost.py` in {time.perf_counter() - t0:.0f} s on "
        f"{cpu_name()} ({jax.default_backend()}, JAX {jax.__version__}): the jitted model step "
        f"with step acceptance, {args.steps} steps per call in one `lax.scan` on the sphere, "
        f"{args.repeats} timed calls after the compiling one; ms per step, fastest call "
        "(median in brackets), and the size of the optimizer's state in MB. '(compact)': the "
        f"n x n matrices in compact form with room for {args.steps} updates "
        "(`NetConfig.qn_memory`, what `optimus.minimize` uses when n > 8 x the budget); "
        f"dense matrices timed up to n = {args.dense_max}.",
        "",
        "| n | " + " | ".join(label for label, _, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]

    def cell(m, memory, n):
        form = "compact" if memory else "dense"
        r = [r for r in rows if r["model"] == m and r["form"] == form and r["n"] == n]
        if not r:
            return "n/a"
        r = r[0]
        return f"{r['fastest_ms']:.3g} ({r['median_ms']:.3g}); {r['state_mb']:.3g} MB"

    for n in dims:
        lines.append(f"| {n} | " + " | ".join(cell(m, mem, n) for _, m, mem in columns) + " |")
    lines.append("")
    (out / "step_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
