"""Shared fixtures of the aggregator conformance suite: the aggregators under test.

Every aggregator must pass every test in ``test_conformance.py``. To put a new aggregator under the
whole suite, add it to ``AGGREGATORS`` (and to ``ROBUST`` if one malicious update among honest ones
cannot move it far, or to ``IN_HULL`` if its result always lies, coordinate by coordinate, between
the smallest and the largest update).
"""

from __future__ import annotations

from collections.abc import Callable

from fedloom.aggregators import (
    Aggregator,
    CenteredClip,
    CoordinateMedian,
    Krum,
    MultiKrum,
    NormBound,
    TrimmedMean,
    WeightedMean,
)

AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": WeightedMean,
    "unweighted_mean": lambda: WeightedMean(weighted=False),
    "median": CoordinateMedian,
    "trimmed_mean": lambda: TrimmedMean(0.2),
    "krum": lambda: Krum(1),
    "multikrum": lambda: MultiKrum(1),
    "norm_bound": lambda: NormBound(1.0),
    "centered_clip": lambda: CenteredClip(1.0, 3),
}

ROBUST = {"median", "trimmed_mean", "krum", "multikrum", "norm_bound", "centered_clip"}
IN_HULL = {"mean", "unweighted_mean", "median", "trimmed_mean", "krum", "multikrum"}
