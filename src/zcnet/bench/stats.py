"""Summary statistics for repetitions: median with min and max, and ratios of medians.

Pure logic (stdlib only). Medians are the headline because the machines are shared and noisy;
min and max show the spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Summary", "ratio_percent", "summarize"]


@dataclass(frozen=True, slots=True)
class Summary:
    """Median, minimum and maximum of ``n`` values."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """The JSON form: ``{"median", "min", "max", "n"}``."""
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def summarize(values: Iterable[float]) -> Summary | None:
    """Summarize ``values``; ``None`` when there are none."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio_percent(value: Summary | None, baseline: Summary | None) -> float | None:
    """``100 * median(value) / median(baseline)``, or ``None`` if either is missing or zero."""
    if value is None or baseline is None or baseline.median == 0:
        return None
    return 100.0 * value.median / baseline.median
