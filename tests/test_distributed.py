"""Meta-training on several devices and processes (``optimus.meta.distributed``).

Devices: a separate Python process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(the flag only takes effect before JAX starts) runs this file as a script (``worker``
functions below). Processes: two ``optimus train`` processes on localhost joined through
``jax.distributed.initialize``. Every subprocess has a wall-clock time-out, so a hang fails
the test instead of stalling the suite; subprocesses share a compilation cache folder (created
for the session) so that equal programs compile once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

MINI = """
name = "mini"
[model]
kind = "mlp"
width = 4
depth = 1
num_heads = 1
hidden = 4
[tasks]
functions = ["sphere", "rosenbrock"]
n_min = 2
n_max = 3
horizon = 4
[estimator]
num_pairs = 4
truncation = 2
[outer]
steps = 100000
warmup_steps = 1
learning_rate = 1e-2
[run]
checkpoint_every = 2
eval_every = 100000
eval_tasks = 4
"""
HERE = Path(__file__).resolve()
TIMEOUT = 240  # seconds any one subprocess may take before the test fails


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture()
def mini(tmp_path) -> Path:
    path = tmp_path / "mini.toml"
    path.write_text(MINI)
    return path


def _env(cache: Path, cpu_devices: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPTIMUS_", "XLA_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONUNBUFFERED="1",
    )
    # the suite's XLA code-generator choice (tests/conftest.py) is kept, nothing else of XLA_FLAGS
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if f.startswith("--xla_cpu_use_fusion_emitters")
    ]
    if cpu_devices:
        flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen(
        [sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, text=True
    )


def _finish(p: subprocess.Popen, log: Path, timeout: float = TIMEOUT) -> tuple[int, str]:
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail(f"subprocess hung for {timeout} s: {log.read_text()[-3000:]}")
    return rc, log.read_text()


def _train_cmd(config: Path, out: Path) -> list[str]:
    return ["-m", "optimus.cli", "train", "--config", str(config), "--out", str(out), "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _assert_close_runs(a: Path, b: Path, name: str = "mini") -> None:
    """Two runs of the same computation on different device counts: equal up to float
    rounding of the cross-device mean."""
    x, y = _arrays(a / f"{name}-last.npz"), _arrays(b / f"{name}-last.npz")
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-4, atol=1e-5, err_msg=k)
    rows = lambda p: (p / "log.csv").read_text().splitlines()[1:]  # noqa: E731
    ra, rb = rows(a), rows(b)
    assert [r.split(",")[0] for r in ra] == [r.split(",")[0] for r in rb]
    for u, v in zip(ra, rb, strict=True):
        np.testing.assert_allclose(
            [float(t) for t in u.split(",")[1:3]], [float(t) for t in v.split(",")[1:3]], rtol=1e-3
        )


# --- in this process: configuration errors that need no second device -----------------------


def test_importing_optimus_does_not_start_jax(tmp_path, cache):
    """``jax.distributed.initialize`` (and forcing CPU devices) only works before the XLA
    backend starts, so importing the package must not run any JAX computation."""
    code = (
        "import optimus, optimus.cli, optimus.meta.train\n"
        "import jax\n"
        "jax.config.update('jax_num_cpu_devices', 3)\n"
        "assert jax.device_count() == 3\n"
        "print('CLEAN')\n"
    )
    env = _env(cache)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "CLEAN" in out.stdout, (
        "importing optimus started the XLA backend (a module-level JAX computation?): "
        + out.stderr[-2000:]
    )


def test_bad_device_counts_fail_before_compiling(tmp_path, mini, capsys):
    import jax

    from optimus.cli import main as cli_main
    from optimus.meta.distributed import DistributedConfig, DistributedError, make_mesh
    from optimus.meta.train import load_config

    n = jax.device_count()
    with pytest.raises(DistributedError, match=f"{n + 7} devices requested but only {n}"):
        make_mesh(n + 7, 64)
    assert make_mesh(1, 7) is None  # one device: the unsharded program
    t0 = time.time()
    code = cli_main(
        ["train", "--config", str(mini), "--out", str(tmp_path / "r"), "--devices", "9"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "9 devices requested" in err and "Traceback" not in err
    assert time.time() - t0 < 60
    # launch settings are validated before JAX starts
    for flags, match in [
        (["--num-processes", "2"], "need a coordinator"),
        (["--num-processes", "2", "--coordinator", "h:1", "--process-id", "2"], "outside"),
        (["--coordinator", "nohostport", "--num-processes", "2", "--process-id", "1"], "host:port"),
        (["--devices", "-1"], "devices must be >= 0"),
    ]:
        assert cli_main(["train", "--config", str(mini), *flags]) == 2
        assert match in capsys.readouterr().err
    # the [distributed] section is a launch setting: it is not part of the run's identity
    cfg = load_config(mini, ["distributed.devices=4"])
    assert cfg.distributed == DistributedConfig(devices=4)
    assert cfg.training_dict() == load_config(mini).training_dict()
    assert "distributed" not in cfg.training_dict()


# --- 4 forced CPU devices in one process ------------------------------------------------------


def worker_sharded(out: str, config: str) -> None:
    """Runs under XLA_FLAGS=--xla_force_host_platform_device_count=4."""
    import jax

    from optimus.meta.distributed import AXIS, DistributedError, make_mesh
    from optimus.meta.train import _trainer_for, load_config, train

    out = Path(out)
    assert jax.device_count() == 4, jax.devices()
    try:
        make_mesh(3, 4)
        raise AssertionError("3 devices for 4 pairs accepted")
    except DistributedError as e:
        assert "divisible by the number of devices (3)" in str(e)

    # the same outer steps on 1 and on 4 devices: the same keys, so equal up to rounding
    states, texts = {}, {}
    for n in (1, 4):
        trainer = _trainer_for(load_config(config, [f"distributed.devices={n}"]))
        state = trainer.init_state()
        texts[n] = trainer.outer_step.lower(state).compile().as_text()
        metrics = []
        for _ in range(3):
            state, m = trainer.outer_step(state)
            metrics.append([float(m["loss"]), float(m["grad_norm"])])
        if n == 4:
            xi = state.pes.xi
            assert xi.sharding.spec == jax.sharding.PartitionSpec(AXIS)
            assert [s.data.shape[0] for s in xi.addressable_shards] == [1, 1, 1, 1]
            assert (
                len(state.theta.sharding.device_set) == 4
                and state.theta.sharding.is_fully_replicated
            )
        states[n] = (jax.device_get(state), np.asarray(metrics))
    (s1, m1), (s4, m4) = states[1], states[4]
    # the first step's meta-loss is a mean of terms that nearly cancel (about -5e-6): the
    # reduction order of 4 devices moves it by a few 1e-9, so an absolute tolerance too
    np.testing.assert_allclose(m4, m1, rtol=1e-5, atol=1e-7)
    leaves1, leaves4 = jax.tree.leaves(s1), jax.tree.leaves(s4)
    assert len(leaves1) == len(leaves4)
    for a, b in zip(leaves1, leaves4, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert np.any(s4.theta != trainer.theta0)  # the steps did move theta
    # particles are computed where they live: the only collectives are the reductions
    assert "all-reduce" in texts[4] and "all-reduce" not in texts[1]
    assert "all-gather" not in texts[4] and "all-to-all" not in texts[4]

    # a checkpoint taken on 4 devices resumes on 1, and one taken on 1 resumes on 4
    cfg = lambda n: load_config(config, [f"distributed.devices={n}"])  # noqa: E731
    train(cfg(1), out / "ref", progress=False, stop_after=6)
    train(cfg(4), out / "4to1", progress=False, stop_after=2)
    train(cfg(1), out / "4to1", resume=True, progress=False, stop_after=4)
    train(cfg(1), out / "1to4", progress=False, stop_after=2)
    train(cfg(4), out / "1to4", resume=True, progress=False, stop_after=4)
    meta = json.loads((out / "1to4" / "checkpoints" / "step_0000006" / "meta.json").read_text())
    assert meta["devices"] == "4 × cpu" and "distributed" not in meta["config"]
    print("WORKER OK", flush=True)


def test_sharded_estimate_equals_single_device_and_checkpoints_move(tmp_path, mini, cache):
    log = tmp_path / "worker.log"
    p = _start([str(HERE), "sharded", str(tmp_path), str(mini)], _env(cache, 4), log)
    rc, text = _finish(p, log)
    assert rc == 0 and "WORKER OK" in text, text[-4000:]
    _assert_close_runs(tmp_path / "4to1", tmp_path / "ref")
    _assert_close_runs(tmp_path / "1to4", tmp_path / "ref")
    # and they are not trivially equal: training moved the parameters
    first = _arrays(tmp_path / "ref" / "mini-last.npz")
    ck = tmp_path / "ref" / "checkpoints"
    assert (ck / "latest").read_text() == "step_0000006"
    assert any(np.any(v != 0) for v in first.values())


# --- two processes on localhost ---------------------------------------------------------------


def _launch_pair(mini: Path, outs: list[Path], cache: Path, tmp: Path, *extra: str, per=None):
    port = _free_port()
    procs = []
    for i in range(2):
        args = _train_cmd(mini, outs[i]) + [
            "--devices",
            "0",
            "--coordinator",
            f"localhost:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            "--dist-timeout",
            "30",
            *extra,
            *(per[i] if per else []),
        ]
        procs.append((_start(args, _env(cache, 2), tmp / f"p{i}.log"), tmp / f"p{i}.log"))
    return procs


def test_two_processes_agree_with_one(tmp_path, mini, cache):
    outs = [tmp_path / "p0", tmp_path / "p1"]
    procs = _launch_pair(mini, outs, cache, tmp_path, "--stop-after", "4")
    ref = _start(
        _train_cmd(mini, tmp_path / "single") + ["--stop-after", "4"],
        _env(cache),
        tmp_path / "single.log",
    )
    results = [_finish(p, log) for p, log in procs]
    for rc, text in results:
        assert rc == 0, text[-4000:]
    assert "meta-parameters written to" in results[0][1]
    assert "process 1 of 2 done" in results[1][1]
    assert not outs[1].exists()  # only process 0 writes
    rc, text = _finish(ref, tmp_path / "single.log")
    assert rc == 0, text[-4000:]
    # 4 devices over 2 processes give the single-device run's result up to rounding
    _assert_close_runs(outs[0], tmp_path / "single")
    card = json.loads((outs[0] / "mini-last.json").read_text())
    assert card["devices"] == "4 × cpu on 2 processes" and card["outer_steps"] == 4


def test_lost_process_leaves_a_resumable_checkpoint(tmp_path, mini, cache):
    outs = [tmp_path / "p0", tmp_path / "p1"]
    (p0, log0), (p1, log1) = _launch_pair(mini, outs, cache, tmp_path)
    latest = outs[0] / "checkpoints" / "latest"
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and p0.poll() is None:
        if latest.exists() and int(latest.read_text().split("_")[1]) >= 4:
            break
        time.sleep(0.05)
    assert p0.poll() is None and p1.poll() is None, log0.read_text()[-3000:]
    t_kill = time.time()
    p1.send_signal(signal.SIGKILL)
    p1.wait()
    rc, text = _finish(p0, log0, timeout=120)  # the survivor stops, it does not hang
    assert rc != 0 and time.time() - t_kill < 120
    # usually our message (the failed collective is seen first); if JAX's coordination
    # service notices the lost process first, it ends the survivor with its own message; on a
    # loaded machine the CPU collectives library (gloo) can instead read the dead peer's
    # half-sent message and abort the survivor from C++ (seen once in four runs under load), which
    # no Python handler can intercept: the survivor still stops and the checkpoint is checked
    # below either way
    assert (
        ("another process was lost" in text and "--resume" in text)
        or ("another task died" in text and "restarted with --resume" in text)
        or ("gloo::EnforceNotMet" in text and "collective mismatch" in text)
    ), text[-3000:]

    from optimus.meta import checkpoint as ckpt
    from optimus.meta.train import Trainer, load_config

    last = ckpt.latest_checkpoint(outs[0] / "checkpoints")
    step = int(last.name.split("_")[1])
    assert step >= 4
    template = Trainer(load_config(mini)).host_init_state()
    state, _ = ckpt.load_checkpoint(last, template)  # intact: hash and structure check out
    assert int(state.step) == step
    # and the run resumes on one device of one process
    p = _start(
        _train_cmd(mini, outs[0]) + ["--resume", "--stop-after", "2"],
        _env(cache),
        tmp_path / "r.log",
    )
    rc, text = _finish(p, tmp_path / "r.log")
    assert rc == 0, text[-3000:]
    rows = (outs[0] / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, step + 3))


def test_bad_launches_fail_fast_with_a_message(tmp_path, mini, cache):
    # processes that disagree on the configuration
    procs = _launch_pair(
        mini,
        [tmp_path / "a", tmp_path / "b"],
        cache,
        tmp_path,
        per=[[], ["--set", "outer.learning_rate=0.5"]],
    )
    # a coordinator nobody serves (process 1), and a process 0 whose partner never comes
    t0 = time.time()
    lonely = ["--num-processes", "2", "--dist-timeout", "3", "--coordinator"]
    unreachable = _start(
        _train_cmd(mini, tmp_path / "u")
        + [*lonely, f"localhost:{_free_port()}"]
        + ["--process-id", "1"],
        _env(cache),
        tmp_path / "u.log",
    )
    alone = _start(
        _train_cmd(mini, tmp_path / "w")
        + [*lonely, f"localhost:{_free_port()}"]
        + ["--process-id", "0"],
        _env(cache),
        tmp_path / "w.log",
    )
    rc, text = _finish(unreachable, tmp_path / "u.log", timeout=60)
    assert rc == 2 and "is unreachable after 3 s" in text, text[-3000:]
    rc, text = _finish(alone, tmp_path / "w.log", timeout=60)
    assert rc == 2 and "not all processes joined within 3 s" in text, text[-3000:]
    for p, log in procs:
        rc, text = _finish(p, log, timeout=120)
        assert rc == 2 and "processes disagree on the configuration" in text, text[-3000:]
    assert time.time() - t0 < 150


if __name__ == "__main__":
    globals()[f"worker_{sys.argv[1]}"](*sys.argv[2:])
