"""Intervals for claims made over a few seeds: the mean and a two-sided 95 % Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

# t_{0.975, df} for df = 1..30; beyond that the normal quantile is within 2 %
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_interval(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of the non-missing ``values``: a 95 % t interval for the mean over seeds (low = high = mean
    for one value; all ``None`` for none)."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, None, None
    mean = sum(present) / len(present)
    if len(present) == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1))
    half = t_quantile_975(len(present) - 1) * sd / math.sqrt(len(present))
    return mean, mean - half, mean + half
