"""A pipeline of no-op steps, to time what being a kfp.local task costs (bench/cycle.py).

No `from __future__ import annotations` here: kfp reads the annotations as real types.
"""

from typing import Callable

from kfp import dsl


def noop(value: int) -> int:
    """Does nothing but start, read its input and write its output."""
    return value


def build_noop_pipeline(tasks: int) -> Callable:
    """`tasks` no-op steps in a chain, each taking the previous one's output."""
    noop_op = dsl.component(noop, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline(name="bench-noop")
    def noop_pipeline():
        previous = noop_op(value=0)
        for _ in range(tasks - 1):
            previous = noop_op(value=previous.output)

    return noop_pipeline
