"""Aggregators combine client updates into one vector.

``WeightedMean``, ``Sum`` and ``NormBound`` stream (memory O(model)); ``CoordinateMedian``,
``TrimmedMean``, ``Krum``, ``MultiKrum`` and ``CenteredClip`` keep every update of the round
(memory O(clients x model)).
"""

from fedloom.aggregators.centered_clip import CenteredClip
from fedloom.aggregators.krum import Krum, MultiKrum, krum_scores
from fedloom.aggregators.mean import Aggregator, EmptyAggregate, Sum, WeightedMean
from fedloom.aggregators.median import CoordinateMedian
from fedloom.aggregators.norm_bound import NormBound
from fedloom.aggregators.trimmed_mean import TrimmedMean

__all__ = [
    "Aggregator",
    "CenteredClip",
    "CoordinateMedian",
    "EmptyAggregate",
    "Krum",
    "MultiKrum",
    "NormBound",
    "Sum",
    "TrimmedMean",
    "WeightedMean",
    "krum_scores",
]
