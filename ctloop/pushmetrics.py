"""ctloop's own figures for Prometheus: each pipeline stage pushes what it measured to a Pushgateway.

A stage is a short-lived process (a pod on a cluster) that Prometheus cannot scrape, so it pushes
its figures to the Pushgateway named by CTLOOP_PUSHGATEWAY_URL, and Prometheus scrapes the
gateway (with honor_labels, so the labels below survive). Each push is grouped by job "ctloop"
and the stage, and replaces that stage's previous push (HTTP PUT): a stage's latest figures stay
until its next run, and a figure the new run did not measure (a drift p-value while the window
fills) disappears with the old ones.

Names: a figure `f` becomes the gauge `ctloop_f`, e.g. `ctloop_yield_value`; the grouping key
labels every sample `job="ctloop", stage="<stage>"` (the gateway adds `instance=""`), and
`labels` (e.g. model_version) label every gauge of the push. A per-slice figure, named
`slice_<slice>_<f>` as in the stages' kfp Metrics, becomes `ctloop_slice_<f>{slice="<slice>"}`
for the slice names given. True and False are pushed as 1 and 0, a string that is a number (an
MLflow version) as that number; None is left out.

Without CTLOOP_PUSHGATEWAY_URL nothing is pushed. A push that fails (the gateway down, slow or
refusing the figures) prints a warning naming the gateway, its secrets masked (ctloop.redact),
and the run goes on: like Slack, metrics never fail the pipeline. One attempt, with a short
timeout: a lost push is replaced by the stage's next run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from http.client import HTTPException
from urllib.error import HTTPError, URLError

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from ctloop.redact import redact_text, redact_url

__all__ = ["JOB", "PUSHGATEWAY_ENV", "TIMEOUT", "Figure", "push_figures", "stage_registry"]

PUSHGATEWAY_ENV = "CTLOOP_PUSHGATEWAY_URL"
JOB = "ctloop"
PREFIX = "ctloop_"
TIMEOUT = 5.0  # seconds for the one push attempt

Figure = float | int | bool | str | None

_NOT_IN_A_NAME = re.compile(r"[^a-zA-Z0-9_]")


def push_figures(stage: str, figures: Mapping[str, Figure], labels: Mapping[str, str] | None = None,
                 slices: Iterable[str] = (), *, gateway: str | None = None, timeout: float = TIMEOUT) -> bool:
    """Push one stage's figures to the Pushgateway; True when the gateway took them.

    Args:
        stage: the stage, the grouping key's second label (its push replaces its previous one).
        figures: name -> value; None is left out, a bool is 1 or 0, a str must be a number.
        labels: labels of every gauge of this push (the same names on every push of a stage).
        slices: slice names: a figure `slice_<name>_<f>` becomes `ctloop_slice_<f>{slice="<name>"}`.
        gateway: the Pushgateway's URL; None reads CTLOOP_PUSHGATEWAY_URL (unset or empty: no push).
        timeout: seconds for the push.
    """
    gateway = (os.environ.get(PUSHGATEWAY_ENV, "") if gateway is None else gateway).strip()
    if not gateway:
        return False
    registry = stage_registry(stage, figures, labels or {}, slices)
    try:
        push_to_gateway(gateway, job=JOB, registry=registry, grouping_key={"stage": stage}, timeout=timeout)
    except (OSError, ValueError, HTTPException) as error:  # unreachable, refused, too slow; a malformed URL
        print(f"[metrics] WARNING: the {stage} stage's figures were not pushed to the Pushgateway "
              f"{redact_url(gateway)} ({_describe(error)}); the run goes on without them.", flush=True)
        return False
    return True


def stage_registry(stage: str, figures: Mapping[str, Figure], labels: Mapping[str, str],
                   slices: Iterable[str] = ()) -> CollectorRegistry:
    """The gauges `push_figures` pushes for `figures` (see the module docstring for the names)."""
    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    names = sorted(set(slices), key=len, reverse=True)  # "a_b" before "a": the longest name matches
    for key, raw in figures.items():
        value = _number(stage, key, raw)
        if value is None:
            continue
        slice_name, figure = _split_slice(key, names)
        metric_labels = dict(labels) if slice_name is None else {**labels, "slice": slice_name}
        name = PREFIX + ("slice_" if slice_name is not None else "") + _NOT_IN_A_NAME.sub("_", figure)
        if name not in gauges:
            what = "of one slice" if slice_name is not None else "of the run"
            gauges[name] = Gauge(name, f"ctloop pipeline figure {figure}, {what}", list(metric_labels),
                                 registry=registry)
        (gauges[name].labels(**metric_labels) if metric_labels else gauges[name]).set(value)
    return registry


def _split_slice(key: str, names: list[str]) -> tuple[str | None, str]:
    """(slice, figure) of `slice_<slice>_<figure>` for one of `names`; (None, key) otherwise."""
    for name in names:
        prefix = f"slice_{name}_"
        if key.startswith(prefix) and len(key) > len(prefix):
            return name, key[len(prefix):]
    return None, key


def _number(stage: str, key: str, value: Figure) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:  # no version (nothing serving)
            return None
        try:
            return float(value)
        except ValueError:
            print(f"[metrics] WARNING: the {stage} stage's figure {key} is {value!r}, not a number; not pushed.",
                  flush=True)
            return None
    return float(value)


def _describe(error: Exception) -> str:
    """What went wrong, with the gateway's own explanation of a refusal (e.g. inconsistent labels)."""
    text = str(error)
    if isinstance(error, HTTPError):
        try:
            body = error.read().decode("utf-8", errors="replace").strip()
        except OSError:
            body = ""
        text = f"HTTP {error.code}" + (f": {body[:300]}" if body else f" {error.reason}")
    elif isinstance(error, URLError):
        text = str(error.reason)
    if not text:
        text = type(error).__name__
    return redact_text(text)
