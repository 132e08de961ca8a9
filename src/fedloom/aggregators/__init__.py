"""Aggregators combine client updates into one vector."""

from fedloom.aggregators.mean import Aggregator, EmptyAggregate, Sum, WeightedMean

__all__ = ["Aggregator", "EmptyAggregate", "Sum", "WeightedMean"]
