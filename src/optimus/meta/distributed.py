r"""Meta-training on several JAX devices and hosts, on JAX's own distributed runtime.

The PES particles are independent until their perturbation-weighted losses are averaged into
the meta-gradient, so they are *data parallel*: the particle axis of every particle-batched
array (inner states, accumulators :math:`\xi`, perturbations :math:`\epsilon`) is sharded over
a 1-D device mesh with axis ``"particles"``, while the meta-parameters :math:`\theta`, the
outer optimizer state and the counters are replicated. The estimate

.. math:: \hat g = \frac{1}{P}\sum_{j=1}^{P} g_j
          = \frac{1}{P}\sum_{d=1}^{D}\;\sum_{j \in \text{shard}(d)} g_j

is then one all-reduce per outer step, inserted by ``jax.jit``'s sharding propagation. Random
numbers are drawn for the whole particle axis from the same keys whatever the sharding (JAX
random values do not depend on how an array is laid out), so a sharded estimate differs from
the single-device one only in the order of that final sum (float rounding).

Processes: one per host, started with the same configuration, each calling
:func:`initialize` (``jax.distributed.initialize`` underneath: coordinator address, process
count and id from the ``[distributed]`` config section, the command line or the environment
variables ``OPTIMUS_COORDINATOR``, ``OPTIMUS_NUM_PROCESSES``, ``OPTIMUS_PROCESS_ID``). Every
collective below goes through JAX (``multihost_utils``); on CPU the cross-process collectives
use gloo. Failure modes are bounded by ``timeout_s``: an unreachable coordinator, a process
that never joins, or a lost host end the run with a message instead of a hang.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "particles"
ENV_COORDINATOR = "OPTIMUS_COORDINATOR"
ENV_NUM_PROCESSES = "OPTIMUS_NUM_PROCESSES"
ENV_PROCESS_ID = "OPTIMUS_PROCESS_ID"
_MSG_BYTES = 1024  # error messages broadcast from process 0 are cut to this length


class DistributedError(RuntimeError):
    """A multi-device or multi-process run cannot start or continue (bad device count,
    unreachable coordinator, processes that disagree, a lost process)."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """The ``[distributed]`` config section. The defaults mean one process on one device,
    which runs exactly the single-device code path.

    Attributes:
        devices: devices in the particle mesh, summed over all processes; ``0`` = every
            device of every process. Must divide the number of particle pairs.
        coordinator: ``host:port`` of process 0 (it serves the coordination service there);
            ``""`` = from ``$OPTIMUS_COORDINATOR`` or single process; ``"auto"`` = JAX's
            cluster auto-detection (SLURM, Open MPI, Kubernetes, ...).
        num_processes: number of processes (hosts); ``0`` = from ``$OPTIMUS_NUM_PROCESSES``
            or 1.
        process_id: this process's id in ``[0, num_processes)``; ``-1`` = from
            ``$OPTIMUS_PROCESS_ID`` or 0.
        timeout_s: seconds to wait for the coordinator and for all processes to join, and
            the heartbeat time-out after which a silent process is declared lost.
    """

    devices: int = 1
    coordinator: str = ""
    num_processes: int = 0
    process_id: int = -1
    timeout_s: float = 60.0

    def __post_init__(self):
        if self.devices < 0:
            raise ValueError(f"distributed.devices must be >= 0 (0 = all), got {self.devices}")
        if self.num_processes < 0:
            raise ValueError("distributed.num_processes must be >= 0 (0 = from environment)")
        if self.process_id < -1:
            raise ValueError("distributed.process_id must be >= 0 (-1 = from environment)")
        if not self.timeout_s > 0:
            raise ValueError(f"distributed.timeout_s must be > 0, got {self.timeout_s}")

    def resolved(self) -> DistributedConfig:
        """Fill unset fields from the environment (or the single-process defaults)."""

        def env_int(name: str, default: int) -> int:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"${name} must be an integer, got {raw!r}") from None

        coordinator = self.coordinator or os.environ.get(ENV_COORDINATOR, "").strip()
        num = self.num_processes or env_int(ENV_NUM_PROCESSES, 1)
        pid = self.process_id if self.process_id >= 0 else env_int(ENV_PROCESS_ID, 0)
        out = dataclasses.replace(self, coordinator=coordinator, num_processes=num, process_id=pid)
        if coordinator != "auto":
            if num > 1 and not coordinator:
                raise ValueError(
                    f"{num} processes need a coordinator address (distributed.coordinator, "
                    f"--coordinator or ${ENV_COORDINATOR}), e.g. host0:12345"
                )
            if not 0 <= pid < num:
                raise ValueError(f"process id {pid} is outside [0, {num}) for {num} processes")
            if coordinator:
                _split_address(coordinator)
        return out

    @property
    def multi_process(self) -> bool:
        return self.coordinator == "auto" or self.num_processes > 1


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


# --- process group ------------------------------------------------------------------------


def _wait_for_port(address: str, timeout_s: float) -> None:
    """Retry a TCP connection to the coordinator until it answers or ``timeout_s`` passes."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise DistributedError(
                f"coordinator {address} is unreachable after {timeout_s:g} s ({last}); start "
                "process 0 there first, and check the address, the port and the firewall"
            )
        time.sleep(0.2)


def initialize(cfg: DistributedConfig) -> DistributedConfig:
    """Join the process group described by ``cfg`` (no-op for a single process).

    Must run before any JAX computation in this process. Process ``i > 0`` first waits (at
    most ``timeout_s``) for the coordinator's port to answer, so a wrong address fails with a
    message; then ``jax.distributed.initialize`` waits for every process to join. If they have
    not all joined after ``timeout_s``, this process prints why and exits with status 2 (JAX
    would otherwise abort it a few seconds later with a less readable message).
    """
    cfg = cfg.resolved()
    if not cfg.multi_process:
        return cfg
    if jax.distributed.is_initialized():
        if cfg.coordinator != "auto" and (
            jax.process_count() != cfg.num_processes or jax.process_index() != cfg.process_id
        ):
            raise DistributedError(
                f"this process already joined a group as process {jax.process_index()} of "
                f"{jax.process_count()}, not {cfg.process_id} of {cfg.num_processes}"
            )
        return cfg
    if cfg.coordinator != "auto" and cfg.process_id != 0:
        _wait_for_port(cfg.coordinator, cfg.timeout_s)
    who = (
        "cluster auto-detection"
        if cfg.coordinator == "auto"
        else f"{cfg.num_processes} processes at coordinator {cfg.coordinator} "
        f"(this is process {cfg.process_id})"
    )
    watchdog = threading.Timer(
        cfg.timeout_s,
        _die,
        args=(
            f"not all processes joined within {cfg.timeout_s:g} s ({who}); start every "
            "process with the same --num-processes and --coordinator and distinct "
            "--process-id, or raise distributed.timeout_s",
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    kwargs: dict[str, Any] = dict(
        initialization_timeout=int(cfg.timeout_s) + 10,  # our watchdog speaks first
        heartbeat_timeout_seconds=max(int(cfg.timeout_s), 5),
        shutdown_timeout_seconds=max(int(cfg.timeout_s), 5),
    )
    if cfg.coordinator != "auto":
        kwargs.update(
            coordinator_address=cfg.coordinator,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        raise DistributedError(
            f"jax.distributed.initialize failed ({e}); it must be called before any JAX "
            "computation in the process"
        ) from e
    finally:
        watchdog.cancel()
    if cfg.coordinator == "auto":
        cfg = dataclasses.replace(
            cfg, num_processes=jax.process_count(), process_id=jax.process_index()
        )
    return cfg


def _die(message: str) -> None:
    sys.stdout.flush()
    print(f"optimus: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def exit_now(code: int) -> None:
    """End a multi-process run at once with ``code`` after a fatal error.

    A normal interpreter exit would wait in JAX's shutdown barrier for processes that may be
    gone and then abort; the checkpoints on disk are complete files either way."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_main() -> bool:
    """True on process 0, the only one that writes files."""
    return jax.process_index() == 0


def multi_process() -> bool:
    return jax.process_count() > 1


# --- mesh and placement ------------------------------------------------------------------


def make_mesh(devices: int, num_pairs: int, what: str = "estimator.num_pairs") -> Mesh | None:
    """The 1-D particle mesh for ``devices`` devices (``0`` = all), or ``None`` for one
    device in one process (the unsharded code path, bit-identical to a run without a mesh).

    Every process contributes the same number of its local devices. Raises a
    :class:`DistributedError` if more devices are asked for than exist, or if ``num_pairs``
    does not divide by the device count."""
    available = jax.devices()
    nproc = jax.process_count()
    n = devices or len(available)
    if n > len(available):
        kinds = sorted({d.platform for d in available})
        raise DistributedError(
            f"{n} devices requested but only {len(available)} {'/'.join(kinds)} device(s) "
            f"exist over {nproc} process(es); on CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} makes {n} CPU devices"
        )
    if n % nproc:
        raise DistributedError(
            f"devices ({n}) must be a multiple of the number of processes ({nproc})"
        )
    if num_pairs % n:
        raise DistributedError(
            f"{what} ({num_pairs}) must be divisible by the number of devices ({n})"
        )
    if n == 1 and nproc == 1:
        return None
    per = n // nproc
    chosen = []
    for p in range(nproc):
        local = sorted((d for d in available if d.process_index == p), key=lambda d: d.id)
        if len(local) < per:
            raise DistributedError(
                f"process {p} has {len(local)} device(s); {per} per process are needed"
            )
        chosen += local[:per]
    return Mesh(np.array(chosen), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def particle_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (particle) axis split over the mesh; other axes whole on each device."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def constrain(tree: Any, sharding: NamedSharding | None) -> Any:
    """``with_sharding_constraint`` on every array leaf (identity when ``sharding`` is None)."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _is_key(a: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key)


def to_global(tree: Any, shardings: Any) -> Any:
    """Place a tree of host (or single-device) values on the mesh. Every process must hold
    the same values (see :func:`broadcast_from_main`)."""

    def put(a, sharding):
        if _is_key(a):
            raise TypeError("typed PRNG keys cannot be placed; store their key_data")
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree, shardings)


def to_host(tree: Any) -> Any:
    """Full NumPy values of a tree of (possibly sharded, multi-process) arrays, on every
    process. A collective when processes > 1: all processes must call it."""
    if not multi_process():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)


def broadcast_from_main(tree: Any) -> Any:
    """Process 0's values of ``tree`` on every process (identity for one process). Other
    processes pass a tree of the same structure, shapes and dtypes."""
    if not multi_process():
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def on_main(fn: Callable[[], Any], error: type[Exception] = DistributedError) -> Any:
    """Run ``fn`` on process 0 only (file-system work); if it raises, every process raises
    the same type of error with process 0's message, so no process is left waiting in a
    collective. Returns ``fn()`` on process 0 and ``None`` elsewhere."""
    result, message, kind = None, "", 0
    if is_main():
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every process
            if not multi_process():
                raise
            message, kind = str(e), (1 if isinstance(e, error) else 2)
            original = e
    if not multi_process():
        return result
    raw = message.encode()[:_MSG_BYTES]
    packet = np.zeros(_MSG_BYTES + 2, np.int32)
    packet[0], packet[1] = kind, len(raw)
    packet[2 : 2 + len(raw)] = np.frombuffer(raw, np.uint8)
    packet = broadcast_from_main(packet)
    if packet[0]:
        if is_main():
            raise original
        text = bytes(packet[2 : 2 + packet[1]].astype(np.uint8)).decode(errors="replace")
        raise (error if packet[0] == 1 else DistributedError)(f"(from process 0) {text}")
    return result


def agree(payload: Any, what: str = "configuration") -> None:
    """Check that every process holds the same ``payload`` (JSON-serialisable); raise a
    :class:`DistributedError` naming the processes that differ from process 0."""
    if not multi_process():
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).digest()
    mine = np.frombuffer(digest, np.uint8).astype(np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # (processes, 32)
    differ = [p for p in range(everyone.shape[0]) if not np.array_equal(everyone[p], everyone[0])]
    if differ:
        raise DistributedError(
            f"processes disagree on the {what}: process(es) {differ} differ from process 0; "
            "start every process with the same config file, --set overrides and flags"
        )


def describe(mesh: Mesh | None) -> str:
    """``"4 × cpu"``-style summary of the devices that run the particles."""
    if mesh is None:
        d = jax.devices()[0]
        return f"1 × {d.platform}"
    devs = list(mesh.devices.flat)
    hosts = len({d.process_index for d in devs})
    where = f" on {hosts} processes" if hosts > 1 else ""
    return f"{len(devs)} × {devs[0].platform}{where}"
