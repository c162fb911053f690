"""Percentiles, histograms and spreads: the arithmetic every figure goes through.

Pure functions over plain lists, so the unit tests pin them without a broker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench._report import CpuShare, Histogram, Percentiles, Repetition, Spread

__all__ = [
    "DEFAULT_EDGES_MS",
    "cpu_shares",
    "histogram",
    "log_edges",
    "percentile",
    "percentiles",
    "ratio",
    "spread",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks.

    The same definition as numpy's default (``linear``, Hyndman and Fan type 7): the sorted
    values sit at ranks 0..n-1, the percentile is at rank ``q/100 * (n-1)``.

    Raises:
        ValueError: No values, or ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float]) -> Percentiles:
    """p50, p90, p99, p99.9 and the extremes of a sample."""
    if not values:
        raise ValueError("percentiles of no values")
    return Percentiles(
        count=len(values),
        min=min(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        p999=percentile(values, 99.9),
        max=max(values),
        mean=sum(values) / len(values),
    )


def spread(samples: Sequence[float]) -> Spread:
    """The median of repeated measurements with their min and max.

    Raises:
        ValueError: No samples.
    """
    if not samples:
        raise ValueError("spread of no samples")
    return Spread(
        median=percentile(samples, 50),
        min=min(samples),
        max=max(samples),
        samples=list(samples),
    )


def ratio(numerator: Spread, denominator: Spread) -> Spread:
    """``numerator / denominator`` of two spreads measured in the same run.

    The median is the ratio of the medians; min and max are the widest it can be
    (smallest numerator over largest denominator and the other way round), because the
    repetitions of the two were not taken at the same instants and cannot be paired.

    Raises:
        ValueError: A denominator value is not positive.
    """
    if min(denominator.samples, default=0.0) <= 0:
        raise ValueError("ratio over a non-positive denominator")
    return Spread(
        median=numerator.median / denominator.median,
        min=numerator.min / denominator.max,
        max=numerator.max / denominator.min,
        samples=[],
    )


def cpu_shares(reps: Sequence[Repetition]) -> list[CpuShare]:
    """Each process's CPU over the repetitions: the spread of its share, in order of appearance."""
    roles: list[str] = []
    for rep in reps:
        roles.extend(role for role in rep.cpu_percent if role not in roles)
    return [
        CpuShare(
            role=role, percent=spread([r.cpu_percent[role] for r in reps if role in r.cpu_percent])
        )
        for role in roles
    ]


def log_edges(low: float, high: float, per_decade: int) -> list[float]:
    """Bucket edges spaced evenly on a log scale from ``low`` to at least ``high``.

    Raises:
        ValueError: ``low`` not positive, ``high`` not above it, or no buckets per decade.
    """
    if low <= 0 or high <= low or per_decade < 1:
        raise ValueError("log_edges needs 0 < low < high and per_decade >= 1")
    steps = math.ceil(round(math.log10(high / low) * per_decade, 9))
    return [float(f"{low * 10 ** (i / per_decade):.6g}") for i in range(steps + 1)]


#: Latency buckets from 0.1 ms to 100 s, ten per decade (each about 26% wider than the last).
DEFAULT_EDGES_MS = log_edges(0.1, 100_000.0, 10)


def histogram(values: Sequence[float], edges: Sequence[float] = DEFAULT_EDGES_MS) -> Histogram:
    """Counts per bucket ``[edges[i], edges[i+1])``, with what falls outside counted apart.

    Raises:
        ValueError: Fewer than two edges, or edges not increasing.
    """
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError("histogram edges must be at least two increasing values")
    counts = [0] * (len(edges) - 1)
    below = above = 0
    for value in values:
        if value < edges[0]:
            below += 1
        elif value >= edges[-1]:
            above += 1
        else:
            counts[_bucket(edges, value)] += 1
    return Histogram(edges=list(edges), counts=counts, below=below, above=above)


def _bucket(edges: Sequence[float], value: float) -> int:
    """The ``i`` with ``edges[i] <= value < edges[i+1]`` (binary search)."""
    low, high = 0, len(edges) - 1
    while high - low > 1:
        middle = (low + high) // 2
        if edges[middle] <= value:
            low = middle
        else:
            high = middle
    return low
