"""A description of the machine a benchmark ran on (for the JSON report)."""

from __future__ import annotations

import os
import platform

from zcnet import implementation
from zcnet.bench.results import Machine

__all__ = ["machine_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> Machine:
    """Kernel, CPU model, CPU count, Python version, zcnet's implementation, whether root."""
    impl = implementation()
    return {
        "kernel": platform.release(),
        "system": platform.system(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count() or 1,
        "python": platform.python_version(),
        "zcnet_implementation": impl.name,
        "zcnet_implementation_reason": impl.reason,
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
    }
