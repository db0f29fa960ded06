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


@pytest.mark.skipif("optimus" not in pretrained.available(), reason="weights not shipped yet")
def test_default_method_uses_the_pretrained_optimus():
    res = optimus.minimize(
        lambda x: jnp.sum((x - 0.3) ** 2), jnp.zeros(8), bounds=(-1, 1), steps=50
    )
    assert res.method == "optimus" and res.success
    assert res.fun < 1e-2 * 8 * 0.09
