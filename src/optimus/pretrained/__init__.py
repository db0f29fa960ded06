"""Shipped pretrained meta-parameters, loaded with :mod:`importlib.resources` (no network).

Each model is ``NAME.npz`` (weights) + ``NAME.json`` (model card: config, task distribution,
estimator, steps, wall time, machine, commit, sha256 of the ``.npz``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from optimus.serialization import load_params_bytes, read_metadata

__all__ = ["available", "load_pretrained", "model_card"]


def _files():
    return resources.files(__name__)


def available() -> tuple[str, ...]:
    """Names of the shipped pretrained models."""
    return tuple(
        sorted(
            p.name[: -len(".npz")]
            for p in _files().iterdir()
            if p.name.endswith(".npz") and _files().joinpath(p.name[:-4] + ".json").is_file()
        )
    )


def model_card(name: str) -> dict:
    """The JSON model card of a shipped model."""
    _check(name)
    meta = json.loads(_files().joinpath(f"{name}.json").read_text())
    with resources.as_file(_files().joinpath(f"{name}.json")) as path:
        read_metadata(path)  # validates format and version
    return meta


def _check(name: str) -> None:
    if name not in available():
        names = ", ".join(available()) or "none yet"
        raise ValueError(
            f"no pretrained weights named {name!r} ship with this version of optimus "
            f"(available: {names}); pass params= explicitly"
        )


@functools.cache
def load_pretrained(name: str = "optimus"):
    """Load a shipped network by name, verifying its sha256 against the model card."""
    meta = model_card(name)
    data = _files().joinpath(f"{name}.npz").read_bytes()
    return load_params_bytes(data, meta, what=f"pretrained model {name!r}")
