"""Command line: ``optimus train`` and ``optimus bench``.

Errors in the user's input (unknown function, bad config, unwritable folder, ...) print a
one-line message and exit with status 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _train(args: argparse.Namespace) -> int:
    from optimus.meta.checkpoint import CheckpointError
    from optimus.meta.train import load_config, train

    try:
        config = load_config(args.config, args.set or [])
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid configuration: {e}") from None
    out = args.out or f"runs/{config.name}"
    try:
        path = train(
            config, out, resume=args.resume, progress=not args.quiet, stop_after=args.stop_after
        )
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"meta-parameters written to {path}")
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from optimus.meta.throughput import main

    try:
        print(f"written {main(args.out)}")
    except OSError as e:
        raise UsageError(f"cannot write to {args.out}: {e}") from None
    return 0


def _bench(args: argparse.Namespace) -> int:
    from optimus.bench.run import BenchError, main

    try:
        return main(args)
    except BenchError as e:
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
        "--stop-after",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many outer steps of this call",
    )
    t.set_defaults(func=_train)

    h = sub.add_parser("throughput", help="measure meta-training inner steps per second")
    h.add_argument("--out", default="bench_results", help="folder for throughput.csv/.md")
    h.set_defaults(func=_throughput)

    from optimus.bench.run import add_arguments

    b = sub.add_parser("bench", help="benchmark optimizers on the test functions")
    add_arguments(b)
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"optimus {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
