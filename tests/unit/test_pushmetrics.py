"""ctloop.pushmetrics without a gateway: the names and labels a push carries, nothing pushed
without CTLOOP_PUSHGATEWAY_URL, and a gateway nobody answers at only warns (the run goes on).
tests/integration/test_pushgateway.py pushes to a real Pushgateway and scrapes it."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import ctloop.pushmetrics
from ctloop.process import free_port
from ctloop.pushmetrics import PUSHGATEWAY_ENV, push_figures, stage_registry


def samples(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_public_names() -> None:
    assert sorted(ctloop.pushmetrics.__all__) == ["Figure", "JOB", "PUSHGATEWAY_ENV", "TIMEOUT", "push_figures",
                                                  "stage_registry"]


def test_figures_become_gauges_with_slices_as_a_label() -> None:
    """`slice_<name>_<figure>` (the kfp Metrics' names) -> ctloop_slice_<figure>{slice=<name>}, the
    longest slice name first; bools are 1/0, a version string its number, None left out."""
    figures = {"yield_value": 0.75, "retrain": True, "baseline": None, "slice_line_a_yield": 0.5,
               "slice_line_a_b_yield": 1.0, "slice_line_a_estimated_accuracy": 0.4, "serving_version": "12"}
    got = samples(stage_registry("monitor", figures, {"model_version": "3"}, ["line_a", "line_a_b"]))
    version = ("model_version", "3")
    assert got == {
        ("ctloop_yield_value", (version,)): 0.75,
        ("ctloop_retrain", (version,)): 1.0,
        ("ctloop_slice_yield", (version, ("slice", "line_a"))): 0.5,
        ("ctloop_slice_yield", (version, ("slice", "line_a_b"))): 1.0,
        ("ctloop_slice_estimated_accuracy", (version, ("slice", "line_a"))): 0.4,
        ("ctloop_serving_version", (version,)): 12.0,
    }


def test_a_figure_that_is_no_number_is_left_out_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    got = samples(stage_registry("deploy", {"serving_version": "v2-beta", "deployed": 1.0}, {}))
    assert got == {("ctloop_deployed", ()): 1.0}
    assert ("[metrics] WARNING: the deploy stage's figure serving_version is 'v2-beta', not a number; not pushed."
            in capsys.readouterr().out)


def test_nothing_is_pushed_without_a_gateway(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert push_figures("monitor", {"yield_value": 0.9}) is False
    monkeypatch.setenv(PUSHGATEWAY_ENV, "  ")
    assert push_figures("monitor", {"yield_value": 0.9}) is False
    assert capsys.readouterr().out == ""


def test_a_gateway_nobody_answers_at_only_warns(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection: a warning naming the gateway with its credentials masked; no exception."""
    url = f"http://pusher:s3cret@127.0.0.1:{free_port()}"
    monkeypatch.setenv(PUSHGATEWAY_ENV, url)
    started = time.monotonic()
    assert push_figures("consensus", {"kept_share": 0.8}) is False
    assert time.monotonic() - started < 2
    out = capsys.readouterr().out
    assert out.startswith(f"[metrics] WARNING: the consensus stage's figures were not pushed to the Pushgateway "
                          f"http://***@127.0.0.1:{url.rsplit(':', 1)[1]} (")
    assert out.rstrip().endswith("); the run goes on without them.") and "s3cret" not in out
