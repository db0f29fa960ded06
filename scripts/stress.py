"""The long reliability checks (``make stress``): writes ``bench_results/stress.md`` and
``bench_results/stress.csv``.

Parts (``--parts``, default all):

* ``properties``: random cases of the property test of ``tests/test_reliability.py``
  (``check_case``: every method, dimensions 1-2000, float32/float64, objective and coordinate
  scales 1e-8-1e8, random starting points, with/without bounds, JAX and NumPy objectives)
  until ``--property-seconds`` have passed;
* ``faults``: every method on the fault objectives of the test suite (NaN / inf values, NaN
  gradients, jumps) and NumPy objectives raising at a random evaluation;
* ``determinism``: the same solves in two fresh processes give bit-identical results;
* ``sigkill``: ``optimus train`` (a tiny configuration through ``--set``) killed with SIGKILL
  at random times, ``--resume``d, and compared bit-exactly with an uninterrupted run;
* ``safeguard``: ``optimus bench --quick`` for the learned methods with and without the
  learned-step safeguard: per-cell differences, fallback counts, time.

Usage: ``python scripts/stress.py [--parts a,b] [--trials 10] [--out bench_results]``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("properties", "faults", "determinism", "sigkill", "safeguard")
DIMS = (1, 2, 3, 5, 8, 13, 30, 64, 150, 400, 1000, 2000)


def _tests_module():
    spec = importlib.util.spec_from_file_location(
        "test_reliability", ROOT / "tests" / "test_reliability.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, part: str, check: str, tried: int, failures: int, wall: float, note: str = ""):
        row = dict(
            part=part, check=check, tried=tried, failures=failures, wall_s=round(wall, 1), note=note
        )
        self.rows.append(row)
        print(f"[{part}] {check}: {tried} tried, {failures} failures, {wall:.0f} s {note}")


# ---------------------------------------------------------------------------------------------


def part_properties(table: Table, seconds: float, seed: int) -> None:
    T = _tests_module()
    rng = random.Random(seed)
    t0 = time.time()
    tried = failed = 0
    notes = []
    while time.time() - t0 < seconds:
        method = rng.choice(T.METHODS)
        n = rng.choice(DIMS)
        if method in ("optimus", "optimus-noprecond") and n > 1000:
            n = 1000  # the (n, n) preconditioner / n-token attention: minutes per case at 2000
        case = (
            method,
            n,
            rng.choice(["float32", "float64"]),
            rng.uniform(-8, 8),
            rng.uniform(-8, 8),
            rng.randrange(len(T.KINDS)),
            rng.randrange(2**31),
            rng.random() < 0.5,
            rng.random() < 0.3,
        )
        tried += 1
        try:
            T.check_case(*case)
        except Exception as e:  # AssertionError or an undocumented exception
            failed += 1
            notes.append(f"{case}: {type(e).__name__}: {str(e)[:200]}")
            traceback.print_exc()
    table.add("properties", "random cases of check_case", tried, failed, time.time() - t0)
    for note in notes[:10]:
        table.add("properties", "failure", 1, 1, 0.0, note)


def part_faults(table: Table, seed: int) -> None:
    import optimus
    from optimus.result import Status

    T = _tests_module()
    t0 = time.time()
    tried = failed = 0
    for method in T.METHODS:
        for test in (T.test_nonfinite_values_gradients_and_jumps,):
            tried += 4  # four fault modes per call
            try:
                test(method)
            except Exception as e:
                failed += 1
                print(f"faults {method}: {type(e).__name__}: {e}")
    table.add(
        "faults", "NaN / inf / NaN-gradient / jump objectives", tried, failed, time.time() - t0
    )

    rng = np.random.default_rng(seed)
    t0 = time.time()
    tried = failed = 0
    for method in T.METHODS:
        for _ in range(3):
            at = int(rng.integers(1, 40))
            calls = []

            def fun(x, at=at, calls=calls):
                calls.append(1)
                if len(calls) == at:
                    raise RuntimeError(f"failure at call {at}")
                return float(np.sum((x - 0.5) ** 2))

            kw = {"options": {"learning_rate": 0.05}} if method in T.LR else {}
            tried += 1
            try:
                res = optimus.minimize(
                    fun, np.zeros(5), jac=lambda x: 2 * (x - 0.5), method=method, steps=30, **kw
                )
                raised = len(calls) >= at
                ok = (
                    res.status == Status.OBJECTIVE_ERROR
                    and not res.success
                    and isinstance(res.exception, RuntimeError)
                    and res.nfev == at - 1
                    if raised
                    else res.success  # the solve finished before the failing call
                )
                ok = ok and bool(np.all(np.isfinite(np.asarray(res.x))))
                if ok and res.nfev:  # fun is the objective at the returned x
                    f_x = float(np.sum((np.asarray(res.x, float) - 0.5) ** 2))
                    ok = abs(res.fun - f_x) <= 1e-6 * max(1.0, f_x)
            except Exception as e:
                ok = False
                print(f"exception case {method}: {type(e).__name__}: {e}")
            failed += not ok
    table.add("faults", "NumPy objective raising at a random call", tried, failed, time.time() - t0)


_DET = """
import sys, json, hashlib
import jax, jax.numpy as jnp, numpy as np
import optimus
from optimus import functions as F
out = {}
for method in ("optimus", "mlp", "lbfgs", "adam"):
    for name, n in (("rosenbrock", 10), ("rastrigin", 30)):
        prob = F.sample_problem(jax.random.key(3), names=(name,), n_min=n, n_max=n)
        kw = {"options": {"learning_rate": 0.01}} if method == "adam" else {}
        res = optimus.minimize(prob.unit_objective, jnp.full((n,), 0.3), method=method,
                               steps=60, bounds=(-1.0, 1.0), key=jax.random.key(7), **kw)
        h = hashlib.sha256(np.asarray(res.x).tobytes() + np.asarray(res.eval_history).tobytes())
        out[f"{method}/{name}/{n}"] = [h.hexdigest(), float(res.fun)]
print(json.dumps(out))
"""


def part_determinism(table: Table) -> None:
    t0 = time.time()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    runs = []
    for _ in range(2):
        p = subprocess.run(
            [sys.executable, "-c", _DET], capture_output=True, text=True, env=env, check=False
        )
        if p.returncode:
            print(p.stderr[-3000:])
            table.add("determinism", "two fresh processes, same inputs", 0, 1, time.time() - t0)
            return
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    a, b = runs
    diff = [k for k in a if a[k][0] != b[k][0]]
    table.add(
        "determinism",
        "two fresh processes, same key: bit-identical x and eval_history",
        len(a),
        len(diff),
        time.time() - t0,
        ", ".join(diff),
    )


# ---------------------------------------------------------------------------------------------
# SIGKILL / resume

OUTER_STEPS = 100
TINY = [
    "model.width=8",
    "model.depth=1",
    "model.num_heads=2",
    "model.hidden=8",
    "tasks.functions=sphere,rastrigin,rosenbrock",
    "tasks.n_min=2",
    "tasks.n_max=4",
    "tasks.horizon=10",
    "estimator.num_pairs=4",
    "estimator.truncation=5",
    "outer.steps=100",
    "outer.warmup_steps=3",
    "run.checkpoint_every=4",
    "run.eval_every=20",
    "run.eval_tasks=4",
]


def _train(out: Path, env: dict, resume: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-m", "optimus.cli", "train", "--config", "configs/optimus.toml"]
    for s in TINY:
        args += ["--set", s]
    args += ["--out", str(out), "--quiet"] + (["--resume"] if resume else [])
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _log_rows(run: Path):
    """The log without its timing columns (wall time, throughput differ between runs)."""
    keep = ("step", "loss", "grad_norm", "skipped", "val_loss", "lr")
    with (run / "log.csv").open() as fh:
        return [tuple(r.get(k) for k in keep) for r in csv.DictReader(fh)]


def _rows_written(run: Path) -> int:
    try:
        return max(len((run / "log.csv").read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


def _arrays(path: Path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same_run(a: Path, b: Path) -> str:
    """Empty string when runs ``a`` and ``b`` have identical logs and final weights."""
    if _log_rows(a) != _log_rows(b):
        return "log differs"
    for name in ("optimus-last.npz", "optimus.npz"):
        x, y = _arrays(a / name), _arrays(b / name)
        if x.keys() != y.keys() or any(not np.array_equal(x[k], y[k]) for k in x):
            return f"{name} differs"
    return ""


def part_sigkill(table: Table, trials: int, seed: int) -> None:
    from optimus.meta import checkpoint as ckpt

    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="optimus-stress-"))
    # a persistent compilation cache (filled by the reference run) keeps each restart short;
    # cached executables are the ones compiled, so results are unchanged
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(work / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    t0 = time.time()
    p = _train(work / "reference", env)
    _, err = p.communicate(timeout=1800)
    if p.returncode:
        table.add("sigkill", "uninterrupted reference run", 1, 1, time.time() - t0, err[-300:])
        return
    t_ref = time.time() - t0
    failed = 0
    notes = []
    for i in range(trials):
        run = work / f"trial{i}"
        p = _train(run, env)
        # kill after a random number of outer steps plus a random fraction of one step, so
        # kills land anywhere, including inside checkpoint writes
        target = rng.randint(1, OUTER_STEPS - 2)
        extra = rng.uniform(0.0, 0.3)
        while p.poll() is None and _rows_written(run) < target:
            time.sleep(0.01)
        time.sleep(extra)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        delay = target
        ck = ckpt.latest_checkpoint(run / "checkpoints") if (run / "checkpoints").exists() else None
        note = f"trial {i}: SIGKILL after step {delay} + {extra:.2f} s, " + (
            f"latest checkpoint {ck.name}" if ck else "no checkpoint yet"
        )
        if not killed:
            note += " (finished before the kill)"
        q = _train(run, env, resume=ck is not None)
        _, err = q.communicate(timeout=1800)
        problem = f"resume failed: {err.strip().splitlines()[-1] if err.strip() else q.returncode}"
        if q.returncode == 0:
            problem = _same_run(work / "reference", run)
        if problem:
            failed += 1
            note += f": {problem}"
        notes.append(note)
        print(note, flush=True)
    table.add(
        "sigkill",
        "SIGKILL at a random time, --resume, bit-exact log and weights vs uninterrupted",
        trials,
        failed,
        time.time() - t0,
        f"reference run {t_ref:.0f} s",
    )
    (work / "notes.txt").write_text("\n".join(notes))
    if not failed:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# safeguard cost


def _bench_learned(out: Path, safeguard: bool):
    import importlib

    import optimus
    from optimus.bench import run as bench_run

    learned = importlib.import_module("optimus.optimizers.learned")
    learned.SAFEGUARD = safeguard
    import jax

    jax.clear_caches()
    counts = {"fallback": 0, "rejected": 0, "runs": 0, "runs_with_fallback": 0}
    original = optimus.minimize

    def counting(*args, **kwargs):
        res = original(*args, **kwargs)
        counts["runs"] += 1
        counts["fallback"] += res.n_fallback
        counts["rejected"] += res.n_rejected
        counts["runs_with_fallback"] += res.n_fallback > 0
        return res

    optimus.minimize = counting
    try:
        parser = argparse.ArgumentParser()
        bench_run.add_arguments(parser)
        args = parser.parse_args(
            ["--quick", "--methods", "optimus,optimus-noprecond,mlp", "--out", str(out)]
        )
        t0 = time.time()
        code = bench_run.main(args)
        wall = time.time() - t0
    finally:
        optimus.minimize = original
        learned.SAFEGUARD = True
        jax.clear_caches()
    if code:
        raise RuntimeError(f"optimus bench exited with {code}")
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return rows, counts, wall


def safeguard_step_time(reps: int = 15) -> list[str]:
    """Median time of 100 learned steps (one jitted ``lax.scan``) with and without the
    safeguard, interleaved; and whether the final iterates are bit-identical."""
    import importlib

    import jax
    import jax.numpy as jnp

    import optimus

    learned = importlib.import_module("optimus.optimizers.learned")
    lines = [
        "| method | n | ms per 100 steps, safeguard on | off | on / off | final x identical |",
        "|---|---|---|---|---|---|",
    ]
    for method in ("optimus", "optimus-noprecond", "mlp"):
        net = optimus.load_pretrained(method)
        for n in (30, 300):
            a = jnp.asarray(np.random.default_rng(0).uniform(1, 10, n), jnp.float32)

            def f(x, a=a):
                return 0.5 * jnp.sum(a * (x - 0.3) ** 2)

            def run(x0, net=net, f=f):
                def body(s, _):
                    v, g = jax.value_and_grad(f)(s.x)
                    return learned.learned_update(net, s, v, g), None

                s, _ = jax.lax.scan(body, learned.learned_init(net, x0), None, length=100)
                return s.x

            fns = {}
            for flag in (True, False):  # SAFEGUARD is read when the function is traced
                learned.SAFEGUARD = flag
                fns[flag] = jax.jit(run)
                fns[flag](jnp.zeros(n)).block_until_ready()
            learned.SAFEGUARD = True
            times: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(reps):
                for flag in (True, False) if rep % 2 else (False, True):
                    t0 = time.perf_counter()
                    fns[flag](jnp.zeros(n)).block_until_ready()
                    times[flag].append(time.perf_counter() - t0)
            same = bool(jnp.array_equal(fns[True](jnp.zeros(n)), fns[False](jnp.zeros(n))))
            on, off = (1e3 * float(np.median(times[k])) for k in (True, False))
            lines.append(f"| {method} | {n} | {on:.1f} | {off:.1f} | {on / off:.2f} | {same} |")
    return lines


def part_safeguard(table: Table, out_dir: Path) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="optimus-sg-"))
    t0 = time.time()
    on_rows, on_counts, on_wall = _bench_learned(work / "on", True)
    off_rows, off_counts, off_wall = _bench_learned(work / "off", False)
    key = lambda r: (r["method"], r["function"], r["variant"], r["dim"], r["seed"])  # noqa: E731
    off = {key(r): r for r in off_rows}
    differ = [
        k
        for r in on_rows
        if (k := key(r)) in off and (r["best"] != off[k]["best"] or r["last"] != off[k]["last"])
    ]
    lines = ["| method | runs | cells differing (best or last) | mean run wall s, on / off |"]
    lines.append("|---|---|---|---|")
    for m in ("optimus", "optimus-noprecond", "mlp"):
        mine = [r for r in on_rows if r["method"] == m]
        theirs = [off[key(r)] for r in mine if key(r) in off]
        d = sum(1 for k in differ if k[0] == m)
        w_on = np.mean([float(r["wall_s"]) for r in mine])
        w_off = np.mean([float(r["wall_s"]) for r in theirs])
        lines.append(f"| {m} | {len(mine)} | {d} | {w_on:.4f} / {w_off:.4f} |")
    lines.append("")
    lines.append(
        f"Safeguard on: {on_counts['fallback']} fallback steps in {on_counts['runs_with_fallback']}"
        f" of {on_counts['runs']} solves (tuning runs included), {on_counts['rejected']} rejected "
        f"trial points. Whole learned-method quick bench: {on_wall:.0f} s with the safeguard, "
        f"{off_wall:.0f} s without, compilation included (2 shared CPU cores: wall times are "
        "noisy; the on run went first)."
    )
    lines += ["", "Step time (median of 15 interleaved repeats):", ""] + safeguard_step_time()
    table.add(
        "safeguard",
        "bench --quick, learned methods: cells whose result changes with the safeguard",
        len(on_rows),
        len(differ),
        time.time() - t0,
        f"{on_counts['fallback']} fallbacks",
    )
    shutil.rmtree(work, ignore_errors=True)
    return lines


# ---------------------------------------------------------------------------------------------


def write_outputs(table: Table, out: Path, safeguard_lines: list[str], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "stress.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table.rows[0]))
        w.writeheader()
        w.writerows(table.rows)
    import jax

    lines = [
        "# Stress checks",
        "",
        "`make stress` (all parts: `python scripts/stress.py`); parts can be re-run one at a "
        "time with `--parts NAME --append`, which keeps the other parts' rows. Last invocation: "
        f"`--parts {','.join(args.parts) or '(none)'} --trials {args.trials} --property-seconds "
        f"{args.property_seconds:g} --seed {args.seed}` ({time.strftime('%Y-%m-%d')}, "
        f"jax {jax.__version__}, {os.cpu_count()} CPU cores shared with other work).",
        "",
        "| part | check | cases tried | failures | wall s | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.rows:
        note = r["note"].replace("|", "/")
        lines.append(
            f"| {r['part']} | {r['check']} | {r['tried']} | {r['failures']} | {r['wall_s']} | "
            f"{note} |"
        )
    if safeguard_lines:
        lines += ["", "## Cost of the learned-step safeguard (`optimus bench --quick`)", ""]
        lines += safeguard_lines
    (out / "stress.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--trials", type=int, default=10, help="SIGKILL trials")
    parser.add_argument("--property-seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of parts not run now from an existing stress.csv",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    os.chdir(ROOT)
    table = Table()
    out = Path(args.out)
    if args.append and (out / "stress.csv").exists():
        with (out / "stress.csv").open() as fh:
            old_rows = [r for r in csv.DictReader(fh) if r["part"] not in args.parts]
        table.rows = old_rows
    sg_lines: list[str] = []
    if "properties" in args.parts:
        part_properties(table, args.property_seconds, args.seed)
    if "faults" in args.parts:
        part_faults(table, args.seed)
    if "determinism" in args.parts:
        part_determinism(table)
    if "sigkill" in args.parts:
        part_sigkill(table, args.trials, args.seed)
    if "safeguard" in args.parts:
        sg_lines = part_safeguard(table, out)
        (out / "stress-safeguard.md").write_text("\n".join(sg_lines) + "\n")
    elif (out / "stress-safeguard.md").exists():
        sg_lines = (out / "stress-safeguard.md").read_text().splitlines()
    write_outputs(table, out, sg_lines, args)
    return int(any(int(r["failures"]) for r in table.rows if r["check"] != "failure"))


if __name__ == "__main__":
    sys.exit(main())
