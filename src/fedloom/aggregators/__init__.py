"""Aggregators combine client updates into one vector."""

from fedloom.aggregators.mean import Aggregator, Sum, WeightedMean

__all__ = ["Aggregator", "Sum", "WeightedMean"]
