"""Logging and ``verbose=``: quiet by default, events on the ``optimus.solve`` logger, progress
lines from inside the jitted loop only when asked, and no trace of them when not."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimus
from optimus import solve


def sphere(x):
    return jnp.sum((x - 1.0) ** 2)


def nan_wall(x):
    return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum((x - 1.0) ** 2))


def nan_everywhere_but_zero(x):
    return jnp.where(jnp.any(x != 0), jnp.nan, jnp.sum((x - 1.0) ** 2))


def test_library_installs_only_a_null_handler():
    handlers = logging.getLogger("optimus").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


def test_quiet_by_default(capsys):
    res = optimus.minimize(nan_everywhere_but_zero, jnp.zeros(3), method="adam", steps=20)
    assert res.status == optimus.Status.NONFINITE  # an event worth a warning happened...
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # ...and nothing was printed


def test_events_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="optimus"):
        optimus.minimize(nan_everywhere_but_zero, jnp.zeros(3), method="adam", steps=20)
        optimus.minimize(
            nan_wall, jnp.zeros(3), method="adam", steps=20, options={"learning_rate": 0.05}
        )
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("optimus.solve", logging.WARNING) in {(n, lvl) for n, lvl, _ in records}
    text = " ".join(m for _, _, m in records)
    assert "adam stopped" in text and "NaN" in text
    assert "trial point(s) rejected" in text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optimus"):

        def fun(x):
            raise OSError("disk gone")

        res = optimus.minimize(fun, np.zeros(2), method="sgd", jac=lambda x: x, steps=3)
    assert res.status == optimus.Status.OBJECTIVE_ERROR
    assert any("OSError: disk gone" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path", ["jit", "host"])
def test_verbose_prints_progress_every_k_iterations(path, capsys):
    kw = {"jac": lambda x: 2 * (x - 1)} if path == "host" else {}
    fun = (lambda x: float(np.sum((x - 1) ** 2))) if path == "host" else sphere
    res = optimus.minimize(
        fun,
        np.zeros(3, np.float32),
        method="sgd",
        steps=12,
        gtol=0.0,
        verbose=4,
        options={"learning_rate": 0.01},
        **kw,
    )
    lines = capsys.readouterr().out.strip().splitlines()
    iters = [int(line.split("iter")[1].split()[0]) for line in lines if " iter " in line]
    assert iters == [4, 8, 12]  # every 4 iterations (and at the end, here iteration 12)
    assert lines[-1].startswith("optimus[sgd] MAX_STEPS") and f"nfev {res.nfev}" in lines[-1]
    assert float(lines[-2].split("best f")[1].split()[0]) == pytest.approx(res.fun, rel=1e-5)


def _jaxpr(verbose: int) -> str:
    def run(x0):
        return solve._solve_jax_impl(
            sphere, "sgd", (), 5, 10, verbose, None, {}, None, x0, None, jnp.asarray(0.0), None
        )

    return str(jax.make_jaxpr(run)(jnp.zeros(3)))


def test_verbose_off_traces_no_callback():
    quiet, loud = _jaxpr(0), _jaxpr(2)
    assert "callback" not in quiet and "callback" in loud


def test_verbose_true_means_every_10_iterations(capsys):
    optimus.minimize(sphere, jnp.zeros(2), method="sgd", steps=20, gtol=0.0, verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [int(x.split("iter")[1].split()[0]) for x in lines if " iter " in x] == [10, 20]
