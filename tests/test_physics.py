"""Physics task (MJX humanoid): data regeneration, objective, gradients, metrics.

All simulator tests share one compiled value-and-gradient (``objective.value_and_grad``);
the suite's persistent compilation cache in ``.jax_cache/`` (git-ignored, set up in
``tests/conftest.py``) makes later runs fast.
"""

from __future__ import annotations

import jax
import mujoco.mjx  # noqa: F401  (the physics extra is required: fail loudly, never skip)
import numpy as np
import pytest

from optimus.physics import metrics as MT
from optimus.physics import model as M
from optimus.physics import motion as MO
from optimus.physics import objective as O
from optimus.physics.camera import make_camera, project


@pytest.fixture(scope="module")
def data():
    return MO.load()


def _clip(data, split="test", i=0):
    return {k: v[i] for k, v in data[split].items()}


def _gt_window(clip, w=0, model_dyn=None):
    dyn = M.model_arrays() if model_dyn is None else model_dyn
    return O.clip_window(clip, w, 2, dyn, ground_truth=True)


def _hold_window(clip, k, w=0):
    return O.clip_window(clip, w, k, M.model_arrays())


def test_dataset_layout(data):
    assert set(data) == set(MO.SPLIT_IDS)
    for split, n in MO.DEFAULT_SIZES.items():
        d = data[split]
        frames = MO.WINDOWS_PER_CLIP * O.FRAMES_PER_WINDOW
        assert d["kp3d"].shape == (n, frames, M.N_KEYPOINTS, 3)
        assert d["obs2d"].shape == (n, frames, M.N_KEYPOINTS, 2)
        assert d["qpos"].shape == (n, MO.WINDOWS_PER_CLIP + 1, M.NQ)
        assert np.all(np.isfinite(d["kp3d"]))
        # nobody fell: pelvis stays above 80% of its initial height
        pelvis = d["kp3d"][:, :, M.PELVIS, 2]
        assert np.all(pelvis > 0.75 * pelvis[:, :1])
    mism = data["test_mismatch"]["mismatch"]
    assert np.all(np.any(mism != 1.0, axis=1))
    assert np.all(data["test"]["mismatch"] == 1.0)
    # splits are disjoint draws: no identical observations across splits
    assert not np.allclose(data["test"]["obs2d"][0], data["val"]["obs2d"][0])


def test_regenerating_a_clip_is_deterministic(data):
    """Same machine: a regenerated clip is bit-identical (no hidden state or randomness).
    Two windows after the settling one instead of six: the same code path at a third of the
    simulation."""
    a, b = MO.generate_clip("test", 0, n_windows=2), MO.generate_clip("test", 0, n_windows=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_committed_clips_are_the_seeded_draws_and_valid_simulations(data):
    """Across machines: the NumPy draws of the committed clips (primitive, body, PD targets)
    are bit-exact, and replaying each window's targets in the simulator from the committed
    window-start state reproduces the committed keypoints. (Regenerating a whole clip is
    bit-exact only on the same CPU type: XLA's CPU rounding differs between machines and the
    contact-rich rollout amplifies it over a clip, e.g. up to 0.4 m after 1 s between the
    machine that wrote the file and an AMD EPYC.)"""
    steps, frames = O.STEPS_PER_WINDOW, O.FRAMES_PER_WINDOW
    for split in ("test", "test_mismatch"):
        d = {key: val[0] for key, val in data[split].items()}
        _, family, mismatch, targets = MO.draw_clip(split, 0, int(d["attempt"]))
        assert family == int(d["family"])
        np.testing.assert_array_equal(mismatch.as_array().astype(np.float32), d["mismatch"])
        np.testing.assert_array_equal(targets[steps:].astype(np.float32), d["targets"])
        dyn = M.model_arrays(mismatch)
        errors = []
        for w in range(MO.WINDOWS_PER_CLIP):
            sl = slice(w * steps, (w + 1) * steps)
            _, _, kps = MO.simulate_targets(dyn, d["qpos"][w], d["qvel"][w], d["targets"][sl])
            ref = d["kp3d"][w * frames : (w + 1) * frames]
            errors.append(np.linalg.norm(kps - ref, axis=-1).mean())
        # measured on an AMD EPYC: median 0.00-0.01 mm, worst window 8.7 mm (a contact event)
        assert np.median(errors) < 1e-3 and max(errors) < 0.025, (split, errors)


def test_objective_at_ground_truth_is_near_noise_floor(data):
    clip = _clip(data)
    floor = 1.0 + O.LAMBDA_3D
    values = []
    for w in range(3):
        val, q, _, kps, terms = _gt_window(clip, w).evaluate(np.zeros(2 * M.N_JOINTS))
        # the true targets from the true state reproduce the stored ground truth exactly
        np.testing.assert_allclose(
            kps, clip["kp3d"][w * O.FRAMES_PER_WINDOW : (w + 1) * O.FRAMES_PER_WINDOW], atol=1e-4
        )
        np.testing.assert_allclose(q, clip["qpos"][w + 1], atol=1e-4)
        values.append(val)
        assert 0.5 * floor < val < 1.6 * floor, (val, terms)
    # holding the start pose (theta = 0 of the reconstruction problem) is clearly worse
    hold = _hold_window(clip, 4, 2).evaluate(np.zeros(4 * M.N_JOINTS))[0]
    assert hold > 2.0 * values[2], (hold, values)


def test_gradient_matches_central_differences(data):
    # contact events make the window loss piecewise smooth (small jumps when a foot contact
    # starts or ends); this window (arms and torso moving, feet planted) is smooth around x
    clip = _clip(data, "test", 1)
    obj = _hold_window(clip, 4, w=2)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.05, obj.n)
    f, g = obj.host_value_and_grad(x)
    assert np.isfinite(f) and np.all(np.isfinite(g))
    ok = 0
    for _ in range(4):
        d = rng.normal(size=obj.n)
        d /= np.linalg.norm(d)
        eps = 1e-3
        fd = (obj.host_value_and_grad(x + eps * d)[0] - obj.host_value_and_grad(x - eps * d)[0]) / (
            2 * eps
        )
        ad = float(g @ d)
        ok += abs(fd - ad) <= 0.1 * abs(ad) + 0.05 * np.linalg.norm(g)
    assert ok >= 3, "autodiff and central differences disagree"


def test_padded_keyframes_do_not_change_the_objective(data):
    clip = _clip(data)
    obj = _hold_window(clip, 2)
    theta = np.random.default_rng(1).normal(0.0, 0.05, O.K_MAX * M.N_JOINTS).astype(np.float32)
    (v1, _), g1 = O.value_and_grad(theta, obj.data)
    theta2 = theta.copy()
    theta2[2 * M.N_JOINTS :] = 0.0
    (v2, _), g2 = O.value_and_grad(theta2, obj.data)
    # padded parameters only enter through the prior; their simulator gradient is zero
    g1 = np.asarray(g1)[2 * M.N_JOINTS :]
    prior_grad = O.ALPHA_PRIOR * 2 * theta[2 * M.N_JOINTS :] / (2 * M.N_JOINTS)
    np.testing.assert_allclose(g1, prior_grad, rtol=1e-4, atol=1e-6)
    assert float(v2) == pytest.approx(
        float(v1) - O.ALPHA_PRIOR * np.sum(theta[2 * M.N_JOINTS :] ** 2) / (2 * M.N_JOINTS),
        rel=1e-4,
    )
    assert np.asarray(g2).shape == (O.K_MAX * M.N_JOINTS,)


def test_window_bank_draws_the_benchmark_windows(data):
    """The physics task family (meta-training on windows): every drawn problem is exactly
    the benchmark's first-window objective of its (clip, window, K), padded with a mask."""
    from optimus.meta.tasks import TaskConfig, make_task
    from optimus.nets import NetConfig, build_net
    from optimus.physics.task import N_PAD, window_bank

    ks = (2, 5, 8)
    bank = window_bank("train", ks, data)
    assert bank.num_windows == MO.DEFAULT_SIZES["train"] * MO.WINDOWS_PER_CLIP
    seen = set()
    for key in jax.random.split(jax.random.key(0), 10):
        p = bank.sample(key)
        c, w = divmod(int(p.index), MO.WINDOWS_PER_CLIP)
        k = int(p.k)
        seen.add(k)
        ref = O.clip_window(_clip(data, "train", c), w, k, M.model_arrays()).data
        got = bank.window_data(p)
        for name in ("qpos0", "qvel0", "base", "interp", "camera", "obs2d", "conf", "est3d"):
            np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(ref, name))
        assert float(got.n_active) == float(ref.n_active) == M.N_JOINTS * k
        assert p.mask.shape == (N_PAD,) and int(p.mask.sum()) == M.N_JOINTS * k
    assert seen <= set(ks) and len(seen) >= 2
    with pytest.raises(ValueError, match="physics_ks"):
        window_bank("train", (9,), data)
    with pytest.raises(ValueError, match="unknown physics split"):
        window_bank("nope", ks, data)
    # the task family: start at theta = 0, validation draws from the val split
    cfg = TaskConfig(family="physics", horizon=5, physics_ks=ks)
    net = build_net(NetConfig(width=8, depth=1, num_heads=2, hidden=8), jax.random.key(0))
    task, theta = make_task(net, cfg)
    state = task.init(theta, jax.random.key(3), False)
    assert state.opt.x.shape == (N_PAD,) and not np.any(np.asarray(state.opt.x))
    val = task.for_validation()
    assert val.bank.num_windows == MO.DEFAULT_SIZES["val"] * MO.WINDOWS_PER_CLIP
    np.testing.assert_array_equal(np.asarray(val.bank.est3d[0]), data["val"]["est3d"][0, :8])


def test_interpolation_matrix():
    for k in (2, 4, 8):
        w = O.interpolation_matrix(k)
        assert w.shape == (O.STEPS_PER_WINDOW, O.K_MAX)
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
        assert np.all(w[:, k:] == 0)
        assert w[-1, k - 1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        O.interpolation_matrix(1)


def test_mismatch_model_shares_structure_but_differs():
    nominal = M.model_arrays()
    perturbed = M.model_arrays(M.Mismatch(mass=1.1, leg=1.05, arm=0.95, friction=0.8))
    assert len(nominal) == len(perturbed)
    mass_p = np.asarray(M.full_model(perturbed).body_mass)
    np.testing.assert_allclose(mass_p, 1.1 * np.asarray(M.full_model(nominal).body_mass), rtol=1e-6)


def test_camera_projection():
    cam = make_camera(np.array([5.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0]))
    uv = np.asarray(project(cam.astype(np.float32), np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.5]])))
    np.testing.assert_allclose(uv[0], [500.0, 500.0], atol=1e-3)
    assert uv[1, 1] < 500.0  # higher in the world = up in the image (smaller v)


def test_metrics():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(5, M.N_KEYPOINTS, 3))
    assert np.all(MT.mpjpe(gt, gt) == 0)
    assert np.allclose(MT.pa_mpjpe(gt, gt), 0, atol=1e-9)
    pred = gt + 0.05 * rng.normal(size=gt.shape)
    assert np.all(MT.pa_mpjpe(pred, gt) <= MT.mpjpe(pred, gt) + 1e-9)
    # a rigid motion + scale of the prediction does not change PA-MPJPE
    angle = 0.7
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    moved = 1.3 * pred @ rot.T + np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(MT.pa_mpjpe(moved, gt), MT.pa_mpjpe(pred, gt), rtol=1e-6)
    # a translation does not change the root-aligned MPJPE, but does change MPJPE
    shifted = pred + np.array([0.1, 0.0, 0.0])
    np.testing.assert_allclose(MT.root_aligned_mpjpe(shifted, gt), MT.root_aligned_mpjpe(pred, gt))
    assert np.all(MT.mpjpe(shifted, gt) > MT.mpjpe(pred, gt))
    # 1 m = 1000 mm
    assert MT.mpjpe(gt + np.array([1.0, 0, 0]), gt) == pytest.approx(np.full(5, 1000.0))


def test_bench_smoke(tmp_path):
    import argparse
    import json

    from optimus.physics import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--out", str(tmp_path), "--clips", "1", "--windows", "1", "--evals", "3"]
        + ["--methods", "adam,bfgs", "--jobs", "1"]
    )
    assert bench.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"adam", "bfgs"}
    for r in summary["methods"].values():
        assert np.isfinite(r["median_final_loss"]) and r["median_mpjpe_mm"] > 0
        assert r["n_windows"] == 2  # one window of one clip of each test split
        assert r["median_first_window_move_rad"] > 0  # both methods leave the start
    assert summary["ground_truth_median_loss"] < summary["methods"]["adam"]["median_final_loss"]
    for name in ("report.md", "fig_loss.png", "fig_mpjpe.png", "fig_skeleton.png", "clip.gif"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_window_whose_simulation_blows_up_is_counted_and_the_run_continues(tmp_path, data):
    """Bad input end to end: the first test clip starts with a root velocity of 1000 (the
    simulated state becomes non-finite in the first window). Every optimizer stops with
    NO_FINITE_POINT instead of claiming success, the clip counts as diverged and failed, its
    later windows are skipped, the other clip is reconstructed, and the summary and report
    are written."""
    import argparse
    import json

    from optimus.physics import bench

    flat = {f"{split}/{k}": v.copy() for split, d in data.items() for k, v in d.items()}
    flat["test/qvel"][0, 0, :6] = 1e3
    np.savez(tmp_path / "bad.npz", **flat)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--out", str(tmp_path / "out"), "--clips", "1", "--windows", "2"]
        + ["--evals", "3", "--methods", "adam,optimus", "--jobs", "1"]
        + ["--data", str(tmp_path / "bad.npz")]
    )
    assert bench.main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for m, r in summary["methods"].items():
        assert r["n_clips"] == 2 and r["diverged_clips"] == 1, m
        assert r["failure_rate"] == 0.5, m
        assert r["n_windows"] == 3, m  # the diverged clip stopped after its first window
        assert r["statuses"].get("NO_FINITE_POINT") == 1, m
        assert r["by_split"]["test"]["median_mpjpe_mm"] == np.inf
        assert np.isfinite(r["by_split"]["test_mismatch"]["median_mpjpe_mm"]), m
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("diverged clips 1 of 2") == 2


def test_worker_pool_returns_results_in_task_order(tmp_path):
    """``--jobs N``: tasks run in spawned processes, results come back in task order and
    every task is reported once as it finishes; one job runs everything here."""
    import argparse

    from optimus.physics import bench

    tasks = [(1.0,), (float("nan"),), (-2.5,), (float("inf"),)]
    expected = [1.0, float("inf"), -2.5, float("inf")]
    seen: list[int] = []
    assert bench._run_all(None, bench._finite_or_inf, tasks, lambda i, r: seen.append(i)) == (
        expected
    )
    assert seen == [0, 1, 2, 3]
    with bench.worker_pool(1, str(tmp_path)) as pool:
        assert pool is None
    with bench.worker_pool(2, str(tmp_path)) as pool:
        done: dict[int, float] = {}
        out = bench._run_all(pool, bench._finite_or_inf, tasks, done.__setitem__)
    assert out == expected and done == dict(enumerate(expected))
    with pytest.raises(RuntimeError, match="shutdown"):  # shut down on leaving the block
        pool.submit(bench._finite_or_inf, 1.0)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(tmp_path), "--jobs", "0"])
    assert 1 <= bench.default_jobs() <= 4
    avail = bench.available_memory_gb()
    assert avail is None or avail > 0


def test_task_model_runs_its_shipped_weights_with_its_method(data):
    """``optimus-humanoid`` in the physics benchmark is the method 'optimus' with the
    fine-tuned weights, and is part of the default methods while it ships."""
    import optimus
    from optimus.physics import bench

    assert "optimus-humanoid" in optimus.pretrained.available()
    assert bench.default_methods()[:2] == ("optimus", "optimus-humanoid")
    card = optimus.pretrained.model_card("optimus-humanoid")
    assert card["train_config"]["tasks"]["family"] == "physics"
    assert card["train_config"]["outer"]["init_from"] == "optimus"
    obj = _hold_window(_clip(data, "train"), 2)  # on test[0] both stay at x0 for 10 evals
    a = bench.solve_window(obj, "optimus-humanoid", 10)
    b = bench.solve_window(obj, "optimus", 10, params=optimus.load_pretrained("optimus-humanoid"))
    c = bench.solve_window(obj, "optimus", 10)
    np.testing.assert_array_equal(a["losses"], b["losses"])
    assert not np.array_equal(a["x"], c["x"])  # other weights, another trajectory


def test_params_dir_replaces_the_weights_of_named_learned_methods(tmp_path):
    """``--params-dir DIR``: a learned method (a task model too) runs ``DIR/<method>.npz`` where
    it exists and the shipped weights otherwise; wrong weights or folders are refused."""
    import optimus
    from optimus.physics import bench

    net = optimus.load_pretrained("mlp")
    optimus.save_params(tmp_path / "optimus-humanoid.npz", optimus.load_pretrained("optimus"))
    optimus.save_params(tmp_path / "optimus.npz", net)  # an mlp cannot run as 'optimus'
    optimus.save_params(tmp_path / "my-variant.npz", optimus.load_pretrained("optimus-noprecond"))
    settings = {
        "methods": ["optimus-humanoid", "mlp", "adam", "my-variant"],
        "params_dir": str(tmp_path),
    }
    nets, source, runs_as = bench.load_weights(settings)
    assert set(nets) == {"optimus-humanoid", "my-variant"}
    assert source == {
        "optimus-humanoid": str(tmp_path / "optimus-humanoid.npz"),
        "mlp": "shipped",
        "my-variant": str(tmp_path / "my-variant.npz"),
    }
    assert runs_as == {
        "optimus-humanoid": "optimus",
        "mlp": "mlp",
        "my-variant": "optimus-noprecond",
    }
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        bench.load_weights({"methods": ["nope"], "params_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="cannot use .*optimus.npz for method 'optimus'"):
        bench.load_weights({"methods": ["optimus"], "params_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="not a folder"):
        bench.load_weights({"methods": ["optimus"], "params_dir": str(tmp_path / "nope")})


def test_summary_reach_is_per_split():
    """Evaluations to reach the best baseline, per split: the 'test' split's windows only
    (its name is a prefix of 'test_mismatch')."""
    from optimus.physics import bench

    def clip(losses):
        w = dict(
            final=losses[-1],
            losses=np.asarray(losses, float),
            wall=1.0,
            nfev=4,
            mpjpe_hist=[10.0],
            n_rejected=0,
            n_fallback=0,
            move=0.1,
            status="MAX_EVALS",
        )
        return dict(windows=[w], mpjpe=10.0, root_mpjpe=9.0, pa_mpjpe=8.0, diverged=False)

    keys = ["test[0]", "test[1]", "test_mismatch[0]", "test_mismatch[1]"]
    # learned: reaches adam's final loss after 1 evaluation on test, never on mismatch
    learned = {
        k: clip([1.0, 1.0, 1.0, 1.0] if k.startswith("test[") else [9, 9, 9, 9.0]) for k in keys
    }
    adam = {k: clip([5.0, 4.0, 3.0, 1.0]) for k in keys}
    settings = {"methods": ["optimus-humanoid", "adam"]}
    summary = bench.summarize({"optimus-humanoid": learned, "adam": adam}, settings, {"a": [1.0]})
    by = summary["methods"]["optimus-humanoid"]["by_split"]
    assert by["test"]["median_evals_to_reach"] == 1 and by["test"]["reached_fraction"] == 1
    assert by["test_mismatch"]["median_evals_to_reach"] == np.inf
    assert by["test_mismatch"]["reached_fraction"] == 0
    assert summary["methods"]["adam"]["by_split"]["test"]["median_evals_to_reach"] == 4


def test_reach_is_never_credited_without_a_finite_target_or_loss():
    """No baseline with a finite final loss: no method 'reaches' the (infinite) target; a
    non-finite loss never counts as reaching one."""
    from optimus.physics import bench

    assert bench._evals_to_reach(np.array([np.inf, np.inf]), np.inf) == np.inf
    assert bench._evals_to_reach(np.array([np.nan, 2.0, 1.0]), 1.5) == 3
    assert bench._evals_to_reach(np.array([3.0, 2.0]), 1.0) == np.inf


def test_recorder_skips_points_with_a_non_finite_gradient(monkeypatch):
    """The recorded best-so-far curve follows the solver's acceptance rule: a trial point with
    a finite loss but a NaN gradient (rejected by the solver) is not recorded as best."""
    from optimus.physics import bench
    from optimus.physics import objective as O

    n, calls = 4, []

    def value_and_grad(theta, data):
        calls.append(1)
        th = np.asarray(theta, float)
        if len(calls) == 2:  # a trial point: finite and very low, but its gradient is NaN
            v, g = 0.01, np.full(n, np.nan)
        else:
            v, g = float(np.sum((th - 0.5) ** 2)) + 1.0, 2 * (th - 0.5)
        return (v, (None, None, np.zeros((8, 15, 3)), None)), g

    class Toy:
        bounds = (-1.0, 1.0)
        data = None

        def __init__(self):
            self.n = n

        def pad(self, theta):
            return np.asarray(theta)

        def evaluate(self, theta):
            v = float(np.sum((np.asarray(theta) - 0.5) ** 2)) + 1.0
            return v, None, None, np.zeros((8, 15, 3)), None

    monkeypatch.setattr(O, "value_and_grad", value_and_grad)
    out = bench.solve_window(Toy(), "adam", 10, lr=0.05)
    assert out["n_rejected"] >= 1
    assert np.all(out["losses"] > 1.0)  # the NaN-gradient point (0.01) is not in the curve
    assert out["losses"][-1] == pytest.approx(out["final"], rel=1e-6)


def test_launched_clips_are_rejected_and_none_is_committed(data):
    """A clip thrown up by a contact instability (pelvis far above its start, or fast) is
    redrawn; no committed clip is one (one was, test_mismatch[2] before 2026-11-28)."""
    t = np.arange(40) * 0.02
    kps = np.zeros((40, M.N_KEYPOINTS, 3))
    kps[:, :, 2] = 1.0
    kps[:, 0, 2] = 1.6  # head above the pelvis
    assert not MO._launched(kps, 1.0) and not MO._fell(kps, 1.0)
    up = kps.copy()
    up[:, M.PELVIS, 2] = 1.0 + 0.5 * np.sin(np.pi * t)  # rises to 1.5 slowly (< 4 m/s)
    up[:, 0, 2] = up[:, M.PELVIS, 2] + 0.6
    assert MO._launched(up, 1.0)
    fast = kps.copy()
    fast[20:, M.PELVIS, 0] = 0.1  # 0.1 m in one 20 ms frame: 5 m/s
    assert MO._launched(fast, 1.0)
    for split, d in data.items():
        for c, kp in enumerate(d["kp3d"]):
            pelvis0 = float(kp[0, M.PELVIS, 2])
            assert not MO._launched(kp, pelvis0), (split, c)
            assert not MO._fell(kp, pelvis0), (split, c)


def test_goal_windows_correct_the_root_height_of_every_mismatch_window(data):
    from optimus.physics import bench

    clip = {k: v[0] for k, v in data["test_mismatch"].items()}
    shift = bench.clip_start(clip)[0][2] - clip["qpos"][0][2]
    assert abs(shift) > 1e-3  # the bodies differ
    dyn = M.model_arrays()
    keys = list(bench.goal_window_keys(clip, "m", 3))
    assert keys == [("m", 0), ("mw1", 1), ("mw2", 2)]
    objs = {key: bench.goal_window(clip, w, 4, dyn) for key, w in keys}
    for w, obj in enumerate(objs.values()):
        qpos0 = np.asarray(obj.data.qpos0)
        assert qpos0[2] - clip["qpos"][w][2] == pytest.approx(shift, abs=1e-6)


def test_goal_check_needs_both_speed_and_mpjpe_on_every_split():
    from optimus.physics import bench

    def m(reach_t, mm_t, reach_m, mm_m):
        split = {
            "test": dict(median_evals_to_reach=reach_t, median_mpjpe_mm=mm_t),
            "test_mismatch": dict(median_evals_to_reach=reach_m, median_mpjpe_mm=mm_m),
        }
        return {"by_split": split}

    summary = {
        "eps": 0.05,
        "methods": {
            "optimus-humanoid": m(8, 40.0, 12, 50.0),
            "mlp": m(3, 60.0, float("inf"), 40.0),
            "adam": m(18, 45.0, 18, 55.0),
            "bfgs": m(float("inf"), 42.0, float("inf"), 49.0),
        },
    }
    lines = [x for x in bench._goal_lines(summary) if x.startswith("- ")]
    assert lines[0].startswith("- optimus-humanoid: test: met (8 evals, 40.0 mm vs best")
    assert "test_mismatch: not met (12 evals, 50.0 mm vs best baseline 49.0 mm)" in lines[0]
    assert lines[1].startswith("- mlp: test: not met (3 evals, 60.0 mm vs best baseline 42.0")
    assert len(lines) == 2  # baselines are not judged


def test_pa_mpjpe_of_a_diverged_frame_is_nan():
    gt = np.random.default_rng(0).normal(size=(2, M.N_KEYPOINTS, 3))
    pred = gt.copy()
    pred[1, 3, 0] = np.nan
    err = MT.pa_mpjpe(pred, gt)
    assert err[0] == pytest.approx(0.0, abs=1e-9) and np.isnan(err[1])


def test_curve_styles_never_give_a_variant_the_colour_of_another_method():
    """With variants run beside the fixed methods (--params-dir), every line keeps its own
    colour (the goal run's figure once drew two methods in the same green and blue)."""
    from optimus.physics.figures import _COLORS, _styles

    methods = [
        "optimus-humanoid",
        "optimus-humanoid-w3",
        "optimus-humanoid-w10",
        "optimus-humanoid-w10-ft",
        "adam",
        "bfgs",
        "lbfgs",
    ]
    styles = _styles(methods)
    colours = [styles[m]["color"] for m in methods]
    assert len(set(colours)) == len(methods)
    assert styles["adam"]["color"] == _COLORS["adam"] and styles["adam"]["ls"] == "-"
    assert styles["optimus-humanoid-w3"]["ls"] == "--"
