"""Command line: ``optimus train`` and ``optimus bench``.

Errors in the user's input (unknown function, bad config, unwritable folder, ...) print a
one-line message and exit with status 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


_DIST_FLAGS = (
    ("devices", "devices"),
    ("coordinator", "coordinator"),
    ("num_processes", "num_processes"),
    ("process_id", "process_id"),
    ("dist_timeout", "timeout_s"),
)


def _train(args: argparse.Namespace) -> int:
    from optimus.meta.checkpoint import CheckpointError
    from optimus.meta.distributed import DistributedError
    from optimus.meta.train import load_config, train

    overrides = list(args.set or [])
    for flag, key in _DIST_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            value = f'"{value}"' if isinstance(value, str) else value
            overrides.append(f"distributed.{key}={value}")
    try:
        config = load_config(args.config, overrides)
        config.distributed.resolved()  # bad environment variables fail here, before JAX starts
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid configuration: {e}") from None
    out = args.out or f"runs/{config.name}"
    try:
        path = train(
            config,
            out,
            resume=args.resume,
            progress=not args.quiet,
            stop_after=args.stop_after,
            tensorboard=args.tensorboard,
        )
    except (CheckpointError, DistributedError, ValueError) as e:
        raise UsageError(str(e)) from None
    import jax

    if jax.process_index() == 0:
        print(f"meta-parameters written to {path}")
    else:
        print(f"process {jax.process_index()} of {jax.process_count()} done (it writes no files)")
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from optimus.meta.throughput import main

    try:
        print(f"written {main(args.out)}")
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot write to {args.out}: {e}") from None
    return 0


def _bench(args: argparse.Namespace) -> int:
    from optimus.bench.run import BenchError, main

    try:
        return main(args)
    except BenchError as e:
        raise UsageError(str(e)) from None


def _bench_physics(args: argparse.Namespace) -> int:
    from optimus.physics.bench import main

    try:
        return main(args)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optimus", description="Transformer-based learned optimization"
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a learned optimizer with PES")
    t.add_argument("--config", help="TOML config (see configs/)")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    t.add_argument("--out", help="run folder (default runs/NAME)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the log's metrics as TensorBoard scalars into OUT/tensorboard/ "
        "(viewing them needs the separate tensorboard package)",
    )
    t.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many outer steps of this call",
    )
    g = t.add_argument_group(
        "devices and hosts",
        "shard the PES particles over devices and processes (config section [distributed]); "
        "on a cluster run the same command on every host with its own --process-id",
    )
    g.add_argument(
        "--devices",
        type=int,
        help="devices over all processes (0 = all; default 1); must divide estimator.num_pairs",
    )
    g.add_argument("--coordinator", help="HOST:PORT of process 0 ($OPTIMUS_COORDINATOR)")
    g.add_argument(
        "--num-processes", type=int, help="number of processes/hosts ($OPTIMUS_NUM_PROCESSES)"
    )
    g.add_argument("--process-id", type=int, help="this process's id ($OPTIMUS_PROCESS_ID)")
    g.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="time-out for joining and for a silent process (default 60)",
    )
    t.set_defaults(func=_train)

    h = sub.add_parser("throughput", help="measure meta-training inner steps per second")
    h.add_argument("--out", default="bench_results", help="folder for throughput.csv/.md")
    h.set_defaults(func=_throughput)

    from optimus.bench.run import add_arguments

    b = sub.add_parser(
        "bench",
        help="benchmark optimizers on the test functions (or: optimus bench physics ...)",
    )
    add_arguments(b)
    b.set_defaults(func=_bench)
    suites = b.add_subparsers(dest="suite", required=False, metavar="{physics}")
    ph = suites.add_parser(
        "physics", help="humanoid motion reconstruction with MuJoCo MJX (optimus.physics)"
    )
    from optimus.physics.bench import add_arguments as add_physics_arguments

    add_physics_arguments(ph)
    ph.set_defaults(func=_bench_physics)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"optimus {args.command}: error: {e}", file=sys.stderr)
        if _in_process_group():
            # do not wait in JAX's shutdown barrier for processes that may be gone
            from optimus.meta.distributed import exit_now

            exit_now(2)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _in_process_group() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()


if __name__ == "__main__":
    sys.exit(main())
