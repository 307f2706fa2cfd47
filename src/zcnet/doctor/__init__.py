"""``zcnet doctor``: what zero-copy this machine can do, why not, and what to change.

Theory of operation (docs/doctor.md): :mod:`zcnet.doctor.facts` reads the machine (kernel
features tried with :mod:`zcnet.lowlevel.probes`, the probes the Sender and Receiver use for
their own refusals; sysctls, rlimits, seccomp, cgroups; interfaces from sysfs and ethtool's
ioctl and netlink interfaces), :mod:`zcnet.doctor.selftest` moves a few MiB with zcnet itself,
:mod:`zcnet.doctor.verdict` judges it all without I/O into a versioned document, and
:mod:`zcnet.doctor.render` prints it (rich, imported only there, when installed).

``import zcnet.doctor`` works on any system; off Linux the report says "not Linux" everywhere.
"""

from __future__ import annotations

from typing import Any

from zcnet.doctor.verdict import SCHEMA, SCHEMA_VERSION

__all__ = ["SCHEMA", "SCHEMA_VERSION", "report"]


def report(interface: str | None = None, *, selftest: bool = True,
           namespace: bool = True) -> dict[str, Any]:
    """The doctor's report as the JSON document ``zcnet doctor --json`` prints (docs/doctor.md).

    Args:
        interface: limit the interface part to this interface (``None``: all of them; a name
            this network namespace does not have gives none).
        selftest: run the live self-test (a few MiB over loopback; about a second).
        namespace: as root, let the self-test create (and delete) a network namespace with an
            ifb sink for the transmit part.

    Never raises for what it finds: a probe that cannot run is reported with its reason.
    """
    from zcnet import __version__
    from zcnet.doctor.facts import gather
    from zcnet.doctor.verdict import build_report

    facts = gather(interface)
    checks = []
    if facts.linux and selftest:
        from zcnet.doctor.selftest import run_selftest

        checks = run_selftest(root_parts=namespace)
    return build_report(facts, checks, zcnet_version=__version__)
