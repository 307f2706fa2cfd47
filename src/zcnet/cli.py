"""The ``zcnet`` command line: ``demo``, ``bench ...``, ``serve``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zcnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="send data both ways and report zero-copy versus copied bytes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        print("zcnet demo: not yet implemented")
        return 0
    return 2
