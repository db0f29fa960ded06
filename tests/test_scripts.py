"""The seed-selection scripts: scripts/train_seeds.sh and scripts/bench_validation.py."""

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
