"""Small measuring helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run in-process forwards with `count` intra-op threads, like a TorchServe worker, then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def best_of(repeats: int, action: Callable[[], T]) -> tuple[float, T]:
    """Fastest wall time of `repeats` runs of `action`, and the last run's result: the fastest
    run is the one least disturbed by other work on a shared machine."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result  # type: ignore[return-value]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded for a report; None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)
