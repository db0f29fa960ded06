"""The scripts: seed selection (train_seeds.sh, bench_validation.py), rule variants, and the
argument checks of the physics measurements."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train import TINY as TRAIN_TINY

ROOT = Path(__file__).resolve().parents[1]

# the meta-training tests' tiny config, cut to 4 outer steps
TINY = TRAIN_TINY.replace("steps = 300", "steps = 4").replace("eval_every = 50", "eval_every = 2")
assert "\nsteps = 4\n" in TINY and "eval_every = 2\n" in TINY, "test_train.TINY changed"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_seeds(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", OPTIMUS=f"{sys.executable} -m optimus.cli")
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_seeds.sh"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_seeds_trains_one_run_per_seed_with_that_seed(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "seeds"
    r = _train_seeds(str(out), "0 7", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = out / "tiny-s0", out / "tiny-s7"
    with np.load(runs[0] / "optimus.npz") as a, np.load(runs[1] / "optimus.npz") as b:
        assert a.files == b.files
        assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # other seed, other net
    card = json.loads((out / "tiny-s7" / "optimus.json").read_text())
    assert card["train_config"]["outer"]["seed"] == 7
    assert card["outer_steps"] == 4


def test_train_seeds_refuses_bad_arguments(tmp_path):
    r = _train_seeds(str(tmp_path / "o"), "0", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "no such config" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is written
    r = _train_seeds(str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr


def test_bench_validation_scores_with_the_benchmark_metric(tmp_path):
    mod = _script("bench_validation")
    out = tmp_path / "v.md"
    args = ["optimus", "mlp", "--functions", "sphere,rastrigin", "--dims", "2", "--seeds", "1"]
    assert mod.main([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "evaluation seeds 100-100" in text
    assert "| sphere | 2 | -30.00 | -30.00 |" in text  # both solve the sphere exactly
    # the score is the benchmark's own: the same problem as evaluation seed 100
    from optimus.bench.run import final_log10

    want = final_log10("optimus", "rastrigin", 2, 100)
    assert f"| rastrigin | 2 | {want:.2f} |" in text
    with pytest.raises(SystemExit, match="seed-start"):
        mod.main(["optimus", "--seed-start", "3"])


def test_rule_variants_keeps_the_card_and_records_the_change(tmp_path):
    """``--variant :FIELD=V`` rewrites a model under its own name (how a shipped rule change
    is applied after training): same weights and sha256, the training card kept, the change
    recorded and merged with an earlier one; a suffix writes ``<stem>-<suffix>``."""
    import optimus

    mod = _script("rule_variants")
    src = tmp_path / "src"
    assert mod.main(["mlp", "--out", str(src), "--variant", ":accept_window=3"]) == 0
    first = json.loads((src / "mlp.json").read_text())
    shipped = optimus.pretrained.model_card("mlp")
    assert first["sha256"] == shipped["sha256"]
    assert first["outer_steps"] == shipped["outer_steps"]  # the training card is kept
    assert first["name"] == "mlp" and first["config"]["accept_window"] == 3
    out = tmp_path / "out"
    args = [str(src / "mlp.npz"), "--out", str(out), "--note", "why"]
    assert mod.main([*args, "--variant", "p:probe=0.25", "--variant", ":probe=0.5"]) == 0
    named = json.loads((out / "mlp-p.json").read_text())
    base = {**shipped["rule_change"], "accept_window": 3}  # merged with the shipped change
    assert named["name"] == "mlp-p" and named["rule_change"] == {**base, "probe": 0.25}
    same = json.loads((out / "mlp.json").read_text())
    assert same["rule_change"] == {**base, "probe": 0.5}
    shipped_note = shipped["rule_change_note"]  # the shipped card's note is kept, "why" appended
    assert same["source"] == "mlp" and same["rule_change_note"] == f"{shipped_note} Then: why"
    net, _ = optimus.load_params(out / "mlp.npz")  # sha256 verified on load
    assert net.config.probe == 0.5 and net.config.accept_window == 3
    again = [str(out / "mlp.npz"), "--out", str(out), "--note", "and why"]
    again += ["--variant", ":probe=0.2"]
    assert mod.main(again) == 0
    later = json.loads((out / "mlp.json").read_text())
    assert later["rule_change"] == {**base, "probe": 0.2}
    assert later["rule_change_note"] == f"{shipped_note} Then: why Then: and why"
    with pytest.raises(SystemExit, match="not an update-rule field"):
        mod.main(["mlp", "--out", str(out), "--variant", "x:width=8"])


def test_variant_targets_counts_cells_as_the_report_does(tmp_path):
    mod = _script("variant_targets")
    header = "method,function,variant,dim,seed,log10_best\n"
    ref = {  # (function, n): adam, sgdm, bfgs, lbfgs, optimus
        ("sphere", 2): (-5, -6, -30, -30, -30),
        ("quadratic", 10): (1, 0, -26, -5, -16),
        ("rastrigin", 10): (2.1, 2.2, 2.2, 2.3, 2.15),
    }
    methods = ("adam", "sgdm", "bfgs", "lbfgs", "optimus")
    rows = [
        f"{m},{f},transformed,{n},{s},{v[i] + 0.1 * (s - 0.5)}"
        for (f, n), v in ref.items()
        for i, m in enumerate(methods)
        for s in (0, 1)  # two seeds whose mean is the value above
    ]
    (tmp_path / "ref.csv").write_text(header + "\n".join(rows) + "\n")
    var = [
        f"optimus,{f},transformed,{n},0,{v}"
        for (f, n), v in {
            ("sphere", 2): -30,
            ("quadratic", 10): -25.5,
            ("rastrigin", 10): 1.5,
        }.items()
    ]
    (tmp_path / "v.csv").write_text(header + "\n".join(var) + "\n")
    out = tmp_path / "t.md"
    assert mod.main([str(tmp_path / "ref.csv"), f"v={tmp_path / 'v.csv'}", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    # reference: beats Adam/SGD-m in 2 of 3 (not rastrigin: 2.15 > 2.1); BFGS/L-BFGS in 1
    # (rastrigin 2.15 < 2.2); margin 2.2 - 2.15; quadratic 11 decades behind BFGS
    assert "| reference | +0.000 | n/a | 2/3 | 1/3 | +0.05 | 1/2 |" in lines
    # the variant: sphere tied (not lower), quadratic within 1 decade, rastrigin ahead
    assert "| v | -3.383 | n/a | 3/3 | 1/3 | +0.70 | 2/2 |" in lines  # (0 - 9.5 - 0.65) / 3
    with pytest.raises(SystemExit, match="NAME=RESULTS"):
        mod.main([str(tmp_path / "ref.csv"), "nonsense"])


@pytest.mark.parametrize(
    "bad",
    [
        ("physics_goal_noise", ["--draws", "1"]),
        ("physics_goal_noise", ["--sd", "0"]),
        ("physics_goal_noise", ["--sd", "nan"]),
        ("physics_goal_noise", ["--evals", "5"]),
        ("physics_goal_noise", ["--jobs", "0"]),
        ("physics_goal_gap", ["--evals", "5"]),
        ("physics_goal_gap", ["--jobs", "-1"]),
    ],
)
def test_physics_goal_scripts_refuse_bad_arguments_before_any_work(tmp_path, bad):
    script, bad = bad
    mod = _script(script)
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", str(tmp_path / "o"), *bad])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists()


def test_recount_targets_reproduces_a_reports_issue_targets(capsys):
    """scripts/recount_targets.py recomputes the "Issue targets" lines from results.csv alone;
    on a run made with the current rules it must print exactly the report's lines."""
    folder = ROOT / "bench_results" / "targets"
    report = (folder / "report.md").read_text()
    assert _script("recount_targets").main([str(folder)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("- Optimus beats")]
    assert len(lines) == 2
    for line in lines:
        assert line in report


def test_step_cost_times_each_model_and_dimension(tmp_path):
    mod = _script("step_cost")
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", str(tmp_path / "bad"), "--dims", "0"])
    assert e.value.code == 2 and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "bad"), "--models", "nonsense"])
    out = tmp_path / "o"
    args = ["--out", str(out), "--models", "optimus,mlp", "--dims", "8,16", "--steps", "2"]
    assert mod.main([*args, "--repeats", "2", "--dense-max", "8"]) == 0
    rows = list(csv.DictReader((out / "step_cost.csv").open()))
    assert [(r["model"], r["form"], r["n"]) for r in rows] == [
        ("optimus", "dense", "8"),
        ("optimus", "compact", "8"),
        ("mlp", "dense", "8"),
        ("optimus", "compact", "16"),  # dense only up to --dense-max
        ("mlp", "dense", "16"),
    ]
    for r in rows:
        assert 0 < float(r["fastest_ms"]) <= float(r["median_ms"])
        assert float(r["state_mb"]) > 0
    # the dense state holds three n x n matrices: larger than the compact one at n = 8 with
    # room for 2 updates
    assert float(rows[0]["state_mb"]) > float(rows[1]["state_mb"])
    report = (out / "step_cost.md").read_text()
    assert "| 16 |" in report and "optimus (compact)" in report and "n/a" in report
