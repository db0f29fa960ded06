"""Atomic, pickle-free checkpoints of arbitrary pytrees of arrays.

A checkpoint is a folder ``DIR/step_000123/`` with ``state.npz`` (one array per leaf, named
by key path) and ``meta.json`` (format, step, config, a fingerprint of the tree structure, the
sha256 of ``state.npz``). Files are written into a temporary folder that is renamed into place
only when complete, and ``DIR/latest`` (a small text file, itself replaced atomically) names
the newest complete checkpoint: a run killed at any instant leaves either the previous or the
new checkpoint intact, never a half-written one.

Restoring needs a *template* tree with the right structure (built from the run's config);
names, shapes and dtypes are checked leaf by leaf, so a checkpoint of a different model or
configuration fails with a clear message instead of loading garbage.

Leaves are stored whole: a run sharded over devices or processes gathers them first and only
process 0 writes (:mod:`optimus.meta.distributed`). Neither the file nor its fingerprint
depends on the number of devices, so a checkpoint restores onto any device count.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimus.serialization import (
    atomic_write_bytes,
    leaf_names,
    npz_bytes_to_tree,
    sha256_bytes,
    tree_to_npz_bytes,
)

FORMAT = "optimus-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the run's configuration."""


def _to_storable(tree: Any) -> Any:
    """Typed PRNG keys are stored as their raw uint32 data."""
    return jax.tree.map(
        lambda a: (
            jax.random.key_data(a)
            if jnp.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key)
            else a
        ),
        tree,
    )


def fingerprint(tree: Any) -> str:
    """A hash of leaf names, shapes and dtypes: equal for trees that can restore each other."""
    stor = _to_storable(tree)
    items = [
        f"{n}:{tuple(np.shape(a))}:{np.asarray(a).dtype}"
        for n, a in zip(leaf_names(stor), jax.tree_util.tree_leaves(stor), strict=True)
    ]
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def save_checkpoint(directory: str | os.PathLike, step: int, tree: Any, **meta: Any) -> Path:
    """Write ``tree`` as checkpoint ``step`` under ``directory`` atomically; prune old ones."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {directory}: {e}") from e
    stor = jax.device_get(_to_storable(tree))
    data = tree_to_npz_bytes(stor)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "fingerprint": fingerprint(tree),
        "sha256": sha256_bytes(data),
        **meta,
    }
    final = directory / f"step_{step:07d}"
    tmp = directory / f".tmp_step_{step:07d}_{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        atomic_write_bytes(tmp / "state.npz", data)
        atomic_write_bytes(tmp / "meta.json", json.dumps(info, indent=2).encode())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_bytes(directory / "latest", final.name.encode())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint to {directory}: {e}") from e
    for old in sorted(directory.glob("step_*"))[:-2]:  # keep the two newest
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    directory = Path(directory)
    ptr = directory / "latest"
    if not ptr.exists():
        return None
    path = directory / ptr.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{ptr} names {path.name}, which does not exist")
    return path


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Restore the tree saved at ``path`` into the structure of ``template``."""
    path = Path(path)
    try:
        info = json.loads((path / "meta.json").read_text())
        data = (path / "state.npz").read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} is incomplete: {e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: meta.json is corrupt ({e})") from e
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an optimus checkpoint of format {FORMAT_VERSION}")
    if sha256_bytes(data) != info.get("sha256"):
        raise CheckpointError(f"checkpoint {path}: state.npz is corrupt (sha256 mismatch)")
    if info.get("fingerprint") != fingerprint(template):
        raise CheckpointError(
            f"checkpoint {path} was written by a run with a different model or configuration "
            "(tree structure, shapes or dtypes differ)"
        )
    stor_template = _to_storable(template)
    try:
        restored = npz_bytes_to_tree(data, stor_template, what=f"checkpoint {path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    # re-wrap typed keys
    restored = jax.tree.map(
        lambda t, r: (
            jax.random.wrap_key_data(r)
            if jnp.issubdtype(getattr(t, "dtype", np.float32), jax.dtypes.prng_key)
            else r
        ),
        template,
        restored,
    )
    return restored, info
