"""The demo's pass-rate table: the figures the monitor measured on the parts line, as printed."""

from __future__ import annotations

from ctloop_app.demo_parts import PassRatePhase, PassRateSummary
from ctloop_app.report import pass_rate_table


def phase(name: str, pass_rate: float, retrain: bool, mode: str = "pass_rate") -> PassRatePhase:
    return PassRatePhase(name, 300, pass_rate, 0.85, 0.9, mode, 0.787, retrain, "the monitor's sentence")


def test_the_table_shows_each_phase_and_whether_the_monitor_tripped() -> None:
    line = PassRateSummary("ok", 32, 0.85, 0.912, [phase("clean", 0.837, False), phase("lighting drift", 0.01, True)],
                           12.34)
    head, columns, clean, drifted = pass_rate_table(line)
    assert head == ("pass rate on the parts line (32x32, 85% OK parts; yield_mode pass_rate, ok_class 'ok'; "
                    "champion golden accuracy 0.912; not retrained here, 12.3 s):")
    assert columns.split() == ["phase", "parts", "pass", "rate", "truly", "OK", "accuracy", "threshold", "monitor"]
    assert clean.split() == ["clean", "300", "0.837", "0.850", "0.900", "0.787", "quiet"]
    assert drifted.split() == ["lighting", "drift", "300", "0.010", "0.850", "0.900", "0.787", "tripped:", "retrain"]


def test_a_window_the_monitor_judged_otherwise_says_so() -> None:
    line = PassRateSummary("ok", 32, 0.85, 0.9, [phase("clean", 0.9, False, mode="accuracy")], 1.0)
    assert "0.900 (accuracy)" in pass_rate_table(line)[2]
