"""Pickle-free saving and loading of meta-parameters: ``.npz`` arrays + JSON metadata.

A saved network is two files side by side: ``NAME.npz`` holds one array per leaf of the
network pytree, named by its key path (e.g. ``encoder.layers[0].qkv.weight``), and
``NAME.json`` holds ``{"format": "optimus-params", "format_version": 1, "config": {...},
"sha256": <hash of the .npz>, ...metadata}``. Loading rebuilds the network skeleton from the
config and fills it leaf by leaf, checking names, shapes and the hash; ``np.load`` is always
called with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from optimus.nets import NetConfig, net_skeleton

FORMAT = "optimus-params"
FORMAT_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def leaf_names(tree: Any) -> list[str]:
    """Stable names of the array leaves of a pytree, from their key paths."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in paths]


def tree_to_npz_bytes(tree: Any) -> bytes:
    names = leaf_names(tree)
    leaves = jax.tree_util.tree_leaves(tree)
    buf = io.BytesIO()
    np.savez(buf, **{n: np.asarray(v) for n, v in zip(names, leaves, strict=True)})
    return buf.getvalue()


def npz_bytes_to_tree(data: bytes, like: Any, *, what: str = "file", finite: bool = False) -> Any:
    """Fill the leaves of ``like`` (arrays or ``jax.ShapeDtypeStruct`` s) from npz ``data``,
    converted to the leaves' dtypes on the host; clear errors on any mismatch, and with
    ``finite`` on any non-finite value."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, ...
        raise ValueError(f"{what} is not a readable .npz archive ({e})") from e
    names = leaf_names(like)
    missing = sorted(set(names) - set(arrays))
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise ValueError(
            f"{what} does not match the expected structure: missing {missing}, unexpected {extra}"
        )
    leaves, bad = [], []
    for name, ref in zip(names, jax.tree_util.tree_leaves(like), strict=True):
        arr = arrays[name]
        if arr.shape != np.shape(ref):
            raise ValueError(f"{what}: leaf {name} has shape {arr.shape}, expected {np.shape(ref)}")
        arr = np.asarray(arr, dtype=ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype)
        if finite and not np.all(np.isfinite(arr)):
            bad.append(name)
        leaves.append(jax.device_put(arr))  # jnp.asarray would compile a copy per shape
    if bad:
        raise ValueError(f"{what}: non-finite weights in {', '.join(bad[:5])}")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def params_path(path: str | os.PathLike) -> Path:
    """The ``.npz`` file of a parameter path: ``model``, ``model.npz`` and ``model.json`` all
    name ``model.npz`` (with its metadata in ``model.json``); any other dot is part of the
    name (``model.v1`` is ``model.v1.npz``, not ``model.npz``)."""
    p = Path(path)
    return p.with_suffix(".npz") if p.suffix in (".npz", ".json") else p.with_name(p.name + ".npz")


def save_params(path: str | os.PathLike, net: Any, **metadata: Any) -> Path:
    """Save a network to ``path`` (``.npz``, see :func:`params_path`) and its metadata to the
    sibling ``.json``."""
    path = params_path(path)
    data = tree_to_npz_bytes(net)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(net.config),
        "sha256": sha256_bytes(data),
        **metadata,
    }
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The validated JSON metadata of a parameter file (:func:`params_path`)."""
    jpath = params_path(path).with_suffix(".json")
    try:
        meta = json.loads(jpath.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"metadata file {jpath} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"metadata file {jpath} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"metadata file {jpath} holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{jpath} is not an optimus parameter file (format={meta.get('format')!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{jpath} has format version {meta.get('format_version')}; this "
            f"optimus reads version {FORMAT_VERSION}"
        )
    return meta


def load_params_bytes(data: bytes, meta: dict, *, what: str = "parameters"):
    """Rebuild a network from npz bytes and metadata, verifying the sha256."""
    digest = sha256_bytes(data)
    if meta.get("sha256") != digest:
        raise ValueError(
            f"{what}: sha256 mismatch (file {digest[:12]}…, metadata "
            f"{str(meta.get('sha256'))[:12]}…): the file is corrupt or was modified"
        )
    config = _net_config(meta.get("config"), what)
    try:
        skeleton = net_skeleton(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: invalid network config in metadata ({e})") from e
    return npz_bytes_to_tree(data, skeleton, what=what, finite=True)


def _net_config(values: Any, what: str) -> NetConfig:
    """A :class:`NetConfig` from metadata, each field type-checked (a JSON ``16.0`` for an
    integer field, or the string ``"false"`` for a boolean one, is an error, not a silent
    conversion)."""
    if not isinstance(values, dict):
        raise ValueError(f"{what}: invalid network config in metadata (not an object)")
    fields = {f.name: f for f in dataclasses.fields(NetConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{what}: invalid network config in metadata (unknown fields {unknown})")
    expected = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
    for name, value in values.items():
        typ = (
            fields[name].type if isinstance(fields[name].type, str) else fields[name].type.__name__
        )
        ok = expected.get(typ)
        if ok is None:
            continue
        if (isinstance(value, bool) and typ != "bool") or not isinstance(value, ok):
            raise ValueError(
                f"{what}: invalid network config in metadata ({name} = {value!r}, expected {typ})"
            )
    try:
        return NetConfig(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: invalid network config in metadata ({e})") from e


def load_params(path: str | os.PathLike):
    """Load a network saved by :func:`save_params`; returns ``(net, metadata)``."""
    path = params_path(path)
    meta = read_metadata(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"parameter file {path} not found") from None
    return load_params_bytes(data, meta, what=str(path)), meta
