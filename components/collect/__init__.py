"""collect: the monitored window's samples from the store, optionally merged with the previous
training set."""

from components.collect.logic import CollectSummary, collect_window

__all__ = ["CollectSummary", "collect_window"]
