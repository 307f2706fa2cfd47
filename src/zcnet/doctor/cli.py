"""``zcnet doctor [--json] [--interface NAME] [--no-selftest] [--no-namespace]``.

Exit status 0 whenever the doctor ran, whatever it found; 2 on bad arguments (argparse's, and an
``--interface`` that this network namespace does not have).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``doctor`` subcommand to the ``zcnet`` parser's subparsers."""
    p = sub.add_parser("doctor", help="what zero-copy this machine can do, why not, what to change",
                       description="Report the zero-copy networking this machine can do, why "
                                   "not, and what to change (docs/doctor.md).")
    p.add_argument("--json", action="store_true",
                   help="print the versioned JSON document instead of the table")
    p.add_argument("--interface", metavar="NAME", help="limit the interface part to NAME")
    p.add_argument("--no-selftest", action="store_true",
                   help="skip the live self-test (no data is moved)")
    p.add_argument("--no-namespace", action="store_true",
                   help="as root, do not create a namespace for the ifb transmit self-test")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``zcnet doctor`` with parsed ``args``; ``parser.error`` (exit 2) on a bad interface."""
    from zcnet.doctor import report
    from zcnet.doctor.facts import interface_names, is_linux
    from zcnet.doctor.render import print_json, print_report

    if args.interface is not None and is_linux() and os.path.isdir("/sys/class/net"):
        names = interface_names()
        if args.interface not in names:
            parser.error(f"--interface {args.interface}: no such interface here "
                         f"(have: {', '.join(names)})")
    doc = report(args.interface, selftest=not args.no_selftest,
                 namespace=not args.no_namespace)
    if args.json:
        print_json(doc)
    else:
        print_report(doc)
    return 0
