"""The ``zcnet`` command line: ``demo``, ``doctor``, ``bench EXPERIMENT``, ``serve``.

The benchmark's parser and runner live in :mod:`zcnet.bench.cli`, the doctor's in
:mod:`zcnet.doctor.cli`; this module only wires them in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of MiB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``zcnet`` argument parser."""
    from zcnet.bench.cli import add_subparsers
    from zcnet.doctor.cli import add_parser as add_doctor

    parser = argparse.ArgumentParser(
        prog="zcnet",
        description="Linux zero-copy networking for Python: demo, doctor and benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="send data both ways, report zero-copy vs copied bytes")
    demo.add_argument("--mib", type=_megabytes, default=64, help="MiB to send each way")
    add_doctor(sub)
    add_subparsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zcnet`` console script and ``python -m zcnet``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from zcnet.doctor.cli import run as run_doctor

        return run_doctor(args, parser)
    if args.command == "demo":
        from zcnet.demo import print_demo

        return print_demo(args.mib * 1024 * 1024)
    from zcnet.bench.cli import run

    return run(args, argv)
