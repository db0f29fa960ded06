"""`optimus bench`: a tiny end-to-end run (CSV, curves, report, figures), the statistics of the
report on synthetic runs, and bad input (exit status 2, one line on stderr, no traceback)."""

import argparse
import csv
import math

import jax
import numpy as np
import pytest

import optimus
from optimus import cli
from optimus.bench import report as R
from optimus.bench import run as B
from optimus.nets import NetConfig, build_net

STEPS = 10
SEEDS = 2
DIMS = (2, 4)
FUNCS = ("rosenbrock", "ackley")
METHODS = ("optimus", "sgd", "bfgs")


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    B.add_arguments(parser)
    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("params")
    cfg = NetConfig(width=8, depth=1, num_heads=2)
    optimus.save_params(d / "optimus.npz", build_net(cfg, jax.random.key(0)))
    return d


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, params_dir):
    out = tmp_path_factory.mktemp("bench") / "out"
    args = _args(
        functions=",".join(FUNCS),
        dims=",".join(map(str, DIMS)),
        variants="transformed",
        methods=",".join(METHODS),
        steps=STEPS,
        seeds=SEEDS,
        tune_seeds=1,
        params_dir=params_dir,
        out=out,
    )
    assert B.main(args) == 0
    return out


def _rows(out):
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_read_cell_means_averages_the_seeds_of_each_cell(tiny_run):
    rows = _rows(tiny_run)
    means = B.read_cell_means(tiny_run / "results.csv")
    assert len(means) == len(METHODS) * len(FUNCS) * len(DIMS)
    for (method, func, variant, dim), mean in means.items():
        vals = [
            float(r["log10_best"])
            for r in rows
            if (r["method"], r["function"], r["variant"], int(r["dim"]))
            == (method, func, variant, dim)
        ]
        assert len(vals) == SEEDS and mean == pytest.approx(np.mean(vals), abs=1e-12)


def test_csv_rows_columns_and_budget(tiny_run):
    with open(tiny_run / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == B.CSV_COLUMNS
    rows = _rows(tiny_run)
    assert len(rows) == len(METHODS) * len(FUNCS) * len(DIMS) * SEEDS
    keys = {(r["method"], r["function"], r["variant"], int(r["dim"]), int(r["seed"])) for r in rows}
    assert len(keys) == len(rows)
    assert {r["method"] for r in rows} == set(METHODS)
    full = 0
    for r in rows:
        evals = int(r["evaluations"])
        assert 1 <= evals <= STEPS
        if r["status"] in ("MAX_STEPS", "MAX_EVALS"):
            assert evals == STEPS, r
        assert r["status"] in optimus.Status.__members__
        full += evals == STEPS
        best, last = float(r["best"]), float(r["last"])
        assert math.isfinite(best) and best >= 0
        assert best <= last or not math.isfinite(last)
        assert float(r["log10_best"]) == pytest.approx(B.log10_floor(best), abs=1e-5)
        assert float(r["wall_s"]) > 0 and float(r["compile_s"]) >= 0
        if r["method"] == "sgd":
            assert float(r["learning_rate"]) in B.LR_GRIDS["full"]["sgd"]
        else:
            assert r["learning_rate"] == ""
        if r["method"] in ("optimus", "sgd"):
            # one evaluation per iteration, except rejected trial points (an increase for
            # optimus' acceptance rule, a non-finite value for both): evaluations only
            assert 1 <= int(r["iterations"]) <= evals
    # learned and first-order methods never stop early on these problems
    assert full >= len(rows) * 2 // 3


def test_curves_npz(tiny_run):
    with np.load(tiny_run / "curves.npz", allow_pickle=False) as z:
        files = set(z.files)
        assert "evaluations" in files
        for m in METHODS:
            for f in FUNCS:
                for n in DIMS:
                    c = z[B.curve_key(m, f, "transformed", n)]
                    assert c.shape == (STEPS,)
                    assert np.all(np.isfinite(c))
                    assert np.all(np.diff(c) <= 0)  # best so far never increases
    # the median curve ends at the median best objective of the CSV
    rows = [r for r in _rows(tiny_run) if r["method"] == "optimus" and r["function"] == FUNCS[0]]
    rows = [r for r in rows if int(r["dim"]) == DIMS[0]]
    with np.load(tiny_run / "curves.npz") as z:
        end = z[B.curve_key("optimus", FUNCS[0], "transformed", DIMS[0])][-1]
    assert end == pytest.approx(np.median([float(r["best"]) for r in rows]), rel=1e-5)


def test_report_and_figures(tiny_run):
    text = (tiny_run / "report.md").read_text()
    for heading in (
        "## Settings",
        "## Versions",
        "## Issue targets",
        "## Wins per method",
        "## Speed-up of Optimus",
        "## Where Optimus loses",
        "## Wall time",
        "## Tuned learning rates",
        f"### {FUNCS[0]} (transformed)",
        f"### {FUNCS[1]} (transformed)",
    ):
        assert heading in text, heading
    assert "| n | " + " | ".join(METHODS) + " |" in text
    assert f"jax: {jax.__version__}" in text
    assert "beats the better of bfgs" in text
    assert "weights from" in text
    for name in ("fig_objective_vs_dim.png", "fig_curves.png", "fig_walltime.png"):
        data = (tiny_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_no_plots_and_skipped_learned(tmp_path, params_dir, monkeypatch, capsys):
    monkeypatch.setattr(optimus.pretrained, "available", lambda: ())
    out = tmp_path / "np"
    args = _args(
        functions="rosenbrock",
        dims="2",
        variants="transformed",
        methods="optimus,mlp,sgd",
        steps=STEPS,
        seeds=1,
        tune_seeds=1,
        params_dir=params_dir,
        out=out,
        no_plots=True,
    )
    assert B.main(args) == 0
    assert not list(out.glob("*.png"))
    assert {r["method"] for r in _rows(out)} == {"optimus", "sgd"}
    text = (out / "report.md").read_text()
    assert "mlp: SKIPPED" in text
    assert "mlp: SKIPPED" in capsys.readouterr().err


def test_defaults_quick_and_full(tmp_path):
    q = B.resolve_config(_args(quick=True, out=tmp_path / "q"))
    assert q.functions == B.QUICK_DEFAULTS["functions"] and q.dims == (2, 10, 30)
    assert q.seeds == 3 and q.tune_seeds == 1 and q.steps == 100
    f = B.resolve_config(_args(out=tmp_path / "f"))
    assert f.functions == optimus.functions.NAMES
    assert f.dims == (2, 10, 30, 100, 300, 1000) and f.seeds == 10 and f.tune_seeds == 2
    assert set(f.variants) == {"canonical", "transformed", "offcentre"}
    todo, notes = B.skipped_cells(f)
    assert ("powell", 2) not in todo and ("powell", 100) in todo
    assert ("perm", 2) in todo and ("perm", 10) not in todo  # squared gradients overflow
    assert any("powell" in n for n in notes) and any("perm" in n for n in notes)


def test_seeds_disjoint_and_deterministic():
    k_eval = [jax.random.key_data(B._keys(s, False)[0]).tolist() for s in range(5)]
    k_tune = [jax.random.key_data(B._keys(s, True)[0]).tolist() for s in range(5)]
    assert not set(map(str, k_eval)) & set(map(str, k_tune))
    assert k_eval == [jax.random.key_data(B._keys(s, False)[0]).tolist() for s in range(5)]


def test_log10_floor():
    assert B.log10_floor(0.0) == B.LOG10_FLOOR
    assert B.log10_floor(1e-40) == B.LOG10_FLOOR
    assert B.log10_floor(100.0) == pytest.approx(2.0)
    assert math.isnan(B.log10_floor(math.inf))


def _counting(fn):
    calls = []

    def score(lr):
        calls.append(lr)
        return fn(lr)

    return score, calls


GRID = B._log_grid(-4, 0, 0.5)  # 1e-4 ... 1 (the full protocol's adam grid)


def test_tuning_interior_optimum_scores_the_grid_only():
    score, calls = _counting(lambda lr: (math.log10(lr) + 2.1) ** 2)
    lr, tried = B.tune_learning_rate(score, GRID)
    assert lr == 0.01
    assert calls == list(GRID)
    assert [t[0] for t in tried] == list(GRID)


def test_tuning_extends_past_the_upper_end_until_the_score_rises():
    # optimum at lr = 10^1.1: the grid's best is its end (1), then 3.16 and 10 are better,
    # 31.6 is worse: extension stops there and 10 is chosen
    score, calls = _counting(lambda lr: (math.log10(lr) - 1.1) ** 2)
    lr, tried = B.tune_learning_rate(score, GRID)
    assert lr == 10.0
    assert calls[len(GRID) :] == [3.16, 10.0, 31.6]
    assert tried[-1] == (31.6, pytest.approx((math.log10(31.6) - 1.1) ** 2))


def test_tuning_extends_past_the_lower_end_at_most_grid_extension_steps():
    # score keeps falling as lr -> 0: the extension stops at its limit, which the report
    # marks as the edge
    score, calls = _counting(lambda lr: math.log10(lr))
    lr, _ = B.tune_learning_rate(score, GRID)
    assert calls[len(GRID) :] == [3.16e-05, 1e-05, 3.16e-06, 1e-06]
    assert len(calls) == len(GRID) + B.GRID_EXTENSION
    assert lr == 1e-06 == B.grid_limits(GRID)[0]
    assert B.grid_limits(GRID) == (1e-06, 100.0)
    assert B.grid_limits(B._log_grid(-8, 0, 0.5)) == (1e-10, 100.0)


def test_tuning_ties_and_non_finite_scores():
    # every rate ties (e.g. all at the floor): the smallest wins, one extra value is tried
    score, calls = _counting(lambda lr: -30.0)
    lr, _ = B.tune_learning_rate(score, GRID)
    assert lr == GRID[0] and len(calls) == len(GRID) + 1
    # nothing finite: the first grid value, no extension
    score, calls = _counting(lambda lr: math.inf)
    lr, _ = B.tune_learning_rate(score, GRID)
    assert lr == GRID[0] and calls == list(GRID)
    # a non-finite value past the end stops the extension
    score, calls = _counting(lambda lr: -math.log10(lr) if lr <= 1 else math.inf)
    lr, _ = B.tune_learning_rate(score, GRID)
    assert lr == 1.0 and calls[len(GRID) :] == [3.16]
    with pytest.raises(ValueError, match="empty grid"):
        B.tune_learning_rate(score, ())


# -- report statistics on synthetic runs (no JAX) -------------------------------------------


def _fake(method, func, n, seed, log10, curve=None, variant="transformed"):
    best = 10.0**log10
    c = np.full(10, best) if curve is None else np.asarray(curve, float)
    return B.Run(method, func, variant, n, seed, best, best, log10, 10, 10, 0.01, 1.0, None,
                 "MAX_STEPS", c)  # fmt: skip


def _fake_results(runs, methods, cells, variants=("transformed",)):
    cfg = B.BenchConfig(
        functions=tuple(dict.fromkeys(c[0] for c in cells)),
        variants=variants,
        dims=tuple(sorted({c[2] for c in cells})),
        methods=methods,
        steps=10,
        seeds=3,
        tune_seeds=1,
        out=None,
        lr_grids={},
    )
    return B.BenchResults(cfg, runs, methods, cells, {}, {}, {}, [])


def test_report_statistics_synthetic():
    methods = ("optimus", "adam", "sgdm", "bfgs", "lbfgs")
    # optimus at -6 everywhere; adam -4; sgdm -2; bfgs -8 on sphere (smooth), -1 on rastrigin
    level = {"optimus": -6, "adam": -4, "sgdm": -2}
    runs, cells = [], []
    for func in ("sphere", "rastrigin"):
        for n in (2, 10):
            cells.append((func, "transformed", n))
            for s in range(3):
                for m in methods:
                    if m in level:
                        v = level[m]
                    else:
                        v = -8 if func == "sphere" else -1
                    runs.append(_fake(m, func, n, s, v + 0.1 * s))
    res = _fake_results(runs, methods, cells)
    st = R.Stats(res)
    assert st.mean("optimus", "sphere", "transformed", 2) == pytest.approx(-5.9)
    assert st.winners("sphere", "transformed", 2) == ["bfgs", "lbfgs"]
    assert st.winners("rastrigin", "transformed", 10) == ["optimus"]
    text = R.build_report(res)
    assert "beats adam **and** sgdm (tuned) by >= 0.01 decades in 100% (4/4)" in text
    assert "beats the better of bfgs/lbfgs by >= 0.01 decades in 50% (2/4)" in text
    # multimodal at n >= 10: rastrigin n=10, margin to the best classical (adam -4) = 2 decades
    assert "(bfgs, lbfgs, adam, sgdm): mean +2.00, median +2.00, min +2.00, max +2.00" in text
    # smooth gap to bfgs/lbfgs: optimus -6 vs -8 = +2 decades (optimus worse)
    assert "positive = Optimus worse): mean +2.00" in text
    assert "Optimus is not the best in 50% (2/4) of cells" in text
    assert "| sphere | transformed | 2 | bfgs |" in text


def test_report_counts_ties_and_floor_cells_that_no_method_can_win():
    """A cell where Optimus and the reference are equal (both at the -30 floor, or both on
    the same plateau) is a tie: the target line says how many, and the share outside ties."""
    methods = ("optimus", "adam", "sgdm", "bfgs", "lbfgs")
    value = {  # (function, n) -> method -> mean log10
        ("sphere", 2): dict(optimus=-30, adam=-5, sgdm=-6, bfgs=-30, lbfgs=-30),
        ("ackley", 10): dict(optimus=1.3, adam=1.3, sgdm=1.3, bfgs=1.3, lbfgs=1.3),
        ("rastrigin", 10): dict(optimus=2.0, adam=2.5, sgdm=2.5, bfgs=2.2, lbfgs=2.1),
        ("levy", 10): dict(optimus=2.0, adam=1.5, sgdm=2.5, bfgs=1.0, lbfgs=2.1),
    }
    runs, cells = [], []
    for (func, n), by in value.items():
        cells.append((func, "transformed", n))
        for s in range(3):
            runs.extend(_fake(m, func, n, s, by[m]) for m in methods)
    text = R.build_report(_fake_results(runs, methods, cells))
    assert "beats adam **and** sgdm (tuned) by >= 0.01 decades in 50% (2/4) of cells" in text
    assert (
        "Ties (|difference| < 0.01 decades, not counted as wins) in 1 of 4 cells, 0 of them "
        "with both at the -30 floor; 1 losses; outside ties Optimus is lower in 67% (2/3)."
    ) in text
    assert "beats the better of bfgs/lbfgs by >= 0.01 decades in 25% (1/4) of cells." in text
    assert "not counted as wins) in 2 of 4 cells, 1 of them with both" in text
    assert "outside ties Optimus is lower in 50% (1/2)." in text


def test_a_lead_smaller_than_the_tie_threshold_is_not_a_win():
    """A cell won by 0.005 decades is a tie: it counts neither as a win in the targets nor
    as a single winner in the tables (found by a review: strict '<' counted such cells)."""
    methods = ("optimus", "adam", "sgdm", "bfgs", "lbfgs")
    value = {
        ("rastrigin", 10): dict(optimus=2.000, adam=2.005, sgdm=2.5, bfgs=2.004, lbfgs=2.1),
        ("levy", 10): dict(optimus=1.0, adam=1.5, sgdm=1.5, bfgs=1.5, lbfgs=1.5),
    }
    runs, cells = [], []
    for (func, n), by in value.items():
        cells.append((func, "transformed", n))
        for s in range(3):
            runs.extend(_fake(m, func, n, s, by[m]) for m in methods)
    res = _fake_results(runs, methods, cells)
    text = R.build_report(res)
    assert "beats adam **and** sgdm (tuned) by >= 0.01 decades in 50% (1/2) of cells" in text
    assert "beats the better of bfgs/lbfgs by >= 0.01 decades in 50% (1/2) of cells" in text
    assert set(R.Stats(res).winners("rastrigin", "transformed", 10)) == {"optimus", "adam", "bfgs"}


def test_speedup_synthetic():
    methods = ("optimus", "adam")
    budget_curve = np.array([1.0, 0.5, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    runs = []
    for s in range(3):
        runs.append(_fake("optimus", "sphere", 2, s, -8, budget_curve))
        runs.append(_fake("adam", "sphere", 2, s, -2))  # optimus reaches 0.01 at evaluation 4
    res = _fake_results(runs, methods, [("sphere", "transformed", 2)])
    sp = R.Stats(res).speedups("adam", "sphere", "transformed", 2)
    np.testing.assert_allclose(sp, [2.5, 2.5, 2.5])
    assert "| sphere | 2 | 2.5x (3/3) |" in R.build_report(res)
    # a baseline better than anything optimus reaches: not reached
    runs = [_fake("optimus", "sphere", 2, s, -8, budget_curve) for s in range(3)]
    runs += [_fake("adam", "sphere", 2, s, -9) for s in range(3)]
    res = _fake_results(runs, methods, [("sphere", "transformed", 2)])
    assert "n/a (not reached) (0/3)" in R.build_report(res)
    assert R.lower_median(np.array([0.0, 4.0])) == 0.0


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--functions", "sphere,nope"], "unknown function 'nope'"),
        (["--dims", "0"], "must be >= 1"),
        (["--dims", "2,x"], "must be an integer"),
        (["--methods", "newton"], "unknown method 'newton'"),
        (["--variants", "rotated"], "unknown variant 'rotated'"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_input_exits_2(argv, message, tmp_path, capsys):
    rc = cli.main(["bench", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("optimus bench: error:") and err.count("\n") == 1


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = cli.main(["bench", "--functions", "sphere", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and "Traceback" not in err
    rc = cli.main(["bench", "--functions", "sphere", "--out", str(blocker)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a folder" in err
    with pytest.raises(B.BenchError):
        B.resolve_config(_args(out=blocker / "sub"))


def test_no_runnable_method_and_bad_params(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(optimus.pretrained, "available", lambda: ())
    rc = cli.main(["bench", "--methods", "mlp", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no method can run" in err and "Traceback" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "optimus.npz").write_bytes(b"not an npz")
    (bad / "optimus.json").write_text('{"format": "optimus-params", "format_version": 1}')
    rc = cli.main(
        ["bench", "--methods", "optimus", "--params-dir", str(bad), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "cannot use" in err and "Traceback" not in err
    rc = cli.main(["bench", "--params-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert rc == 2 and "is not a folder" in capsys.readouterr().err


def test_scipy_reference_matches_optimus_lbfgs_on_a_quadratic(tmp_path):
    """The scipy L-BFGS-B reference row: within the budget, on the box, and as good as our
    own L-BFGS on a convex problem (a cross-check of both)."""
    out = tmp_path / "out"
    args = _args(
        functions="sphere,quadratic",
        dims="5",
        variants="transformed",
        methods="lbfgs,scipy-lbfgsb",
        steps=40,
        seeds=2,
        tune_seeds=1,
        out=out,
    )
    assert B.main(args) == 0
    rows = _rows(out)
    assert {r["method"] for r in rows} == {"lbfgs", "scipy-lbfgsb"}
    for r in rows:
        assert 1 <= int(r["evaluations"]) <= 40
        assert r["status"] in optimus.Status.__members__
        assert float(r["wall_s"]) > 0
    best = {(r["method"], r["function"], r["seed"]): float(r["best"]) for r in rows}
    for (m, f, seed), v in best.items():
        if m == "scipy-lbfgsb":
            ours = best[("lbfgs", f, seed)]
            assert v <= max(10 * ours, 1e-8), (f, seed, v, ours)
    assert "scipy-lbfgsb" in (out / "report.md").read_text()


def test_bench_physics_subcommand_is_wired():
    from optimus import cli

    args = cli.build_parser().parse_args(["bench", "physics", "--quick", "--out", "somewhere"])
    assert args.func is cli._bench_physics and args.quick and args.out == "somewhere"
    args = cli.build_parser().parse_args(["bench", "--quick"])
    assert args.func is cli._bench
