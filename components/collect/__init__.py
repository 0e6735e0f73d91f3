"""collect: the monitored window's samples from the store, optionally merged with the previous
training set."""

from components.collect.logic import CollectResult, CollectSummary, cap_per_class, collect_from_registry, collect_window

__all__ = ["CollectResult", "CollectSummary", "cap_per_class", "collect_from_registry", "collect_window"]
