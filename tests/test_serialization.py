"""Saving and loading meta-parameters (pickle-free) and the shipped pretrained weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus import pretrained
from optimus.nets import NetConfig, build_net


@pytest.mark.parametrize(
    "config",
    [
        NetConfig(width=8, depth=2, num_heads=2),
        NetConfig(kind="mlp", hidden=8),
        NetConfig(width=8, depth=1, num_heads=2, precondition=False),
    ],
)
def test_roundtrip(tmp_path, config):
    net = build_net(config, jax.random.key(3))
    path = optimus.save_params(tmp_path / "net", net, note="hello")
    assert path.suffix == ".npz" and path.with_suffix(".json").exists()
    loaded, meta = optimus.load_params(path)
    assert meta["note"] == "hello" and meta["format_version"] == 1
    assert loaded.config == config
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as z:  # plain arrays, readable without pickle
        assert all(z[k].dtype != object for k in z.files)


def test_tampered_truncated_or_mismatched_files_are_refused(tmp_path):
    net = build_net(NetConfig(width=8, depth=1, num_heads=2), jax.random.key(0))
    path = optimus.save_params(tmp_path / "net", net)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="sha256 mismatch"):
        optimus.load_params(path)
    # a consistent hash but a different architecture in the card
    path.write_bytes(data)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"]["width"] = 16
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape"):
        optimus.load_params(path)
    meta["format_version"] = 99
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version"):
        optimus.load_params(path)
    with pytest.raises(FileNotFoundError):
        optimus.load_params(tmp_path / "missing.npz")


def test_shipped_models_load_and_verify():
    names = pretrained.available()
    for name in names:
        card = pretrained.model_card(name)
        for key in (
            "config",
            "sha256",
            "task_distribution",
            "estimator",
            "outer_steps",
            "wall_time_s",
            "machine",
            "commit",
        ):
            assert key in card, (name, key)
        net = optimus.load_pretrained(name)
        assert net.config.kind == ("mlp" if name == "mlp" else "optimus")
    with pytest.raises(ValueError, match="no pretrained weights named"):
        optimus.load_pretrained("does-not-exist")


def test_shipped_rule_changes_are_recorded_in_the_cards():
    """The function-trained models run with the 0.1 first step, restarts at stalls and the
    smoothing phase, all chosen after training, and optimus (the one with a dense estimate)
    with the SR1 direction; their cards say so. The physics fine-tune runs with its own first
    step, BFGS only, no restarts and no smoothing phase."""
    smooth = {
        "smooth_rounds": 8,
        "smooth_samples": 8,
        "smooth_decay": 0.75,
        "smooth_trap": 0.05,
        "smooth_max_step": 2.0,
    }
    for name in ("optimus", "optimus-noprecond", "mlp"):
        card = optimus.pretrained.model_card(name)
        want = {"probe": 0.1, "restart": 0.1, **smooth}
        if name == "optimus":
            want["sr1"] = True
        assert card["rule_change"] == want and card["rule_change_note"], name
        assert "bench_results/restart" in card["rule_change_note"], name
        assert "bench_results/smoothing" in card["rule_change_note"], name
        config = optimus.load_pretrained(name).config
        assert config.probe == 0.1 and config.sr1 == (name == "optimus")
        assert config.restart == 0.1
        assert all(getattr(config, k) == v for k, v in smooth.items()), name
    assert "bench_results/sr1" in optimus.pretrained.model_card("optimus")["rule_change_note"]
    humanoid = optimus.load_pretrained("optimus-humanoid").config
    assert not humanoid.sr1 and humanoid.probe == 0.0 and humanoid.restart == 0.0
    assert humanoid.smooth_rounds == 0
    assert "rule_change" not in optimus.pretrained.model_card("optimus-humanoid")


@pytest.mark.skipif("optimus" not in pretrained.available(), reason="weights not shipped yet")
def test_default_method_uses_the_pretrained_optimus():
    res = optimus.minimize(
        lambda x: jnp.sum((x - 0.3) ** 2), jnp.zeros(8), bounds=(-1, 1), steps=50
    )
    assert res.method == "optimus" and res.success
    assert res.fun < 1e-2 * 8 * 0.09


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "swap"])
def test_tampered_shipped_weights_are_refused_at_load(tmp_path, monkeypatch, damage):
    """The shipped files are checked against the sha256 of their model card on every load."""
    src = pretrained._files()
    for name in ("optimus", "mlp"):
        for ext in (".npz", ".json"):
            (tmp_path / f"{name}{ext}").write_bytes(src.joinpath(f"{name}{ext}").read_bytes())
    target = tmp_path / "optimus.npz"
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) - 7])
    elif damage == "empty":
        target.write_bytes(b"")
    else:  # another model's (valid) weights under this name
        target.write_bytes((tmp_path / "mlp.npz").read_bytes())
    monkeypatch.setattr(pretrained, "_files", lambda: tmp_path)
    pretrained.load_pretrained.cache_clear()
    try:
        with pytest.raises(ValueError, match="pretrained model 'optimus': sha256 mismatch"):
            optimus.load_pretrained("optimus")
        assert optimus.load_pretrained("mlp").config.kind == "mlp"  # the intact one loads
    finally:
        pretrained.load_pretrained.cache_clear()


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    """An archive holding an object (pickled) array is refused even with a matching hash."""
    net = build_net(NetConfig(width=8, depth=1, num_heads=2), jax.random.key(0))
    path = optimus.save_params(tmp_path / "net", net)
    import io

    from optimus.serialization import leaf_names, sha256_bytes

    arrays = {n: np.asarray(v) for n, v in zip(leaf_names(net), jax.tree.leaves(net), strict=True)}
    first = leaf_names(net)[0]
    arrays[first] = np.array([{"payload": 1}], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = sha256_bytes(buf.getvalue())
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a readable .npz archive.*pickle"):
        optimus.load_params(path)


def test_load_learned_file_infers_or_checks_the_method(tmp_path):
    import optimus
    from optimus.optimizers import learned_method_of, load_learned_file

    net = optimus.load_pretrained("optimus-noprecond")
    path = optimus.save_params(tmp_path / "variant.npz", net, name="variant")
    loaded, method = load_learned_file(path)
    assert method == "optimus-noprecond" == learned_method_of(loaded)
    assert learned_method_of(optimus.load_pretrained("mlp")) == "mlp"
    assert learned_method_of(optimus.load_pretrained("optimus")) == "optimus"
    with pytest.raises(ValueError, match=r"cannot use .*variant.npz for method 'optimus'"):
        load_learned_file(path, "optimus")
    (tmp_path / "junk.npz").write_bytes(b"not a file of ours")
    with pytest.raises(ValueError, match="cannot use .*junk.npz as learned-optimizer weights"):
        load_learned_file(tmp_path / "junk.npz")


def test_dotted_names_are_distinct_files_and_bad_json_is_a_value_error(tmp_path):
    net = optimus.load_pretrained("mlp")
    a = optimus.save_params(tmp_path / "model.v1", net, tag="a")
    b = optimus.save_params(tmp_path / "model.v2", net, tag="b")
    assert a != b and a.name == "model.v1.npz" and a.with_suffix(".json").exists()
    assert optimus.load_params(tmp_path / "model.v1")[1]["tag"] == "a"
    assert optimus.load_params(tmp_path / "model.v2.npz")[1]["tag"] == "b"
    b.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a list, not an object"):
        optimus.load_params(b)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", 16.0, r"width = 16.0, expected int"),
        ("monotone", "false", r"monotone = 'false', expected bool"),
        ("probe", True, r"probe = True, expected float"),
        ("colour", "red", r"unknown fields \['colour'\]"),
        ("num_heads", 3, r"invalid network config in metadata \(width 8 must be divisible"),
    ],
)
def test_malformed_metadata_config_names_the_file_and_field(tmp_path, field, value, message):
    """A hand-edited model card with a mistyped field fails with the file's name; nothing is
    silently converted (a non-empty string used to count as true)."""
    net = build_net(NetConfig(width=8, depth=1, num_heads=2), jax.random.key(0))
    path = optimus.save_params(tmp_path / "net", net)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"][field] = value
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        optimus.load_params(path)


def test_non_finite_weights_are_refused(tmp_path):
    net = build_net(NetConfig(width=8, depth=1, num_heads=2), jax.random.key(0))
    leaves, treedef = jax.tree.flatten(net)
    leaves[0] = leaves[0].at[0].set(jnp.nan)
    path = optimus.save_params(tmp_path / "net", jax.tree.unflatten(treedef, leaves))
    with pytest.raises(ValueError, match="non-finite weights in"):
        optimus.load_params(path)


def test_loading_compiles_nothing(tmp_path, caplog):
    """Loading builds the skeleton abstractly and puts the arrays on the device: no XLA
    compilation (initialising a network eagerly compiles one small program per initialiser
    and shape, about 70 for the shipped Optimus, 7-10 s on a 2-core CPU). Shapes seen
    nowhere else in the suite, so that no in-memory cache could hide a compilation."""
    import equinox as eqx

    from optimus.nets import with_rule

    config = NetConfig(width=12, depth=2, num_heads=3, hidden=7, attention="induced")
    rng = np.random.default_rng(0)  # weights made without JAX ops, which would warm its caches
    net = jax.tree.map(
        lambda s: jax.device_put(rng.normal(size=s.shape).astype(s.dtype)),
        eqx.filter_eval_shape(build_net, config, jax.random.key(0)),
    )
    path = optimus.save_params(tmp_path / "net", net)
    with jax.log_compiles(True), caplog.at_level("DEBUG"):
        loaded, _ = optimus.load_params(path)
        ruled = with_rule(loaded, probe=0.25)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiles, compiles
    assert ruled.config.probe == 0.25
    leaves = jax.tree.leaves(net), jax.tree.leaves(loaded), jax.tree.leaves(ruled)
    for a, b, c in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
