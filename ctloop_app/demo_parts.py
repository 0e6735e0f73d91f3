"""The demo's second line, machined parts: the yield a plant counts, the pass rate.

The digits have no OK class, so the demo measures the pass rate on the parts line (ctloop.parts):
a champion trained on clean parts (the champion's recipe, at most `epochs` epochs) is served by
a TorchServe of its own with its own prediction store, as a second line's PC would be; a window
of clean parts and then a window of drifted ones go through it, and after each window the
monitor's own function (components.monitor.logic.check_yield) judges it with yield_mode
pass_rate and ok_class "ok": the share of parts classified OK, compared by the baseline rule
with the version's first window (the clean one). The parts line is not retrained here; the
digits story shows the retraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from components.monitor.logic import check_yield
from ctloop.config import PipelineConfig
from ctloop.drift import DriftKind
from ctloop.parts import OK_CLASS, PART_CLASSES, parts_split, with_ok_share
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop.wire import FEEDBACK_NAME
from ctloop_app.bootstrap import bootstrap_models
from ctloop_app.stack import local_stack, serve_models
from ctloop_app.traffic import Answer, Traffic


@dataclass(frozen=True)
class PartsLineSettings:
    """The parts line of the demo: how it drifts, its image size, its champion's training ceiling
    and its share of OK parts (parts_split is balanced, a real line passes most parts)."""

    drift_kind: DriftKind = "lighting"
    drift_severity: float = 1.0
    image_size: int = 32
    epochs: int = 8
    ok_share: float = 0.85


@dataclass(frozen=True)
class PassRatePhase:
    """One window of parts and the monitor's judgement of it.

    Attributes:
        name: the phase ("clean", "lighting drift").
        parts: parts played (the monitor's window).
        pass_rate: the monitor's yield, the share of the window classified ok_class.
        ok_share: the share of the window that was truly OK.
        accuracy: the champion's accuracy on the window (true labels).
        mode: the yield the monitor measured (pass_rate, unless feedback covered the window).
        threshold: what the pass rate was compared with (baseline rule).
        retrain: whether the monitor tripped.
        reason: the monitor's sentence.
    """

    name: str
    parts: int
    pass_rate: float
    ok_share: float
    accuracy: float
    mode: str
    threshold: float | None
    retrain: bool
    reason: str


@dataclass(frozen=True)
class PassRateSummary:
    ok_class: str
    image_size: int
    line_ok_share: float
    golden_accuracy: float
    phases: list[PassRatePhase]
    seconds: float


def run_parts_line(work_dir: Path, settings: PartsLineSettings, config: PipelineConfig, seed: int,
                   audit_share: float, concurrency: int, say: Callable[[str], None] = print) -> PassRateSummary:
    """Train, serve and play the parts line in `work_dir`; the monitor judges each window's pass rate."""
    started = time.monotonic()
    size = settings.image_size
    say(f"parts line: training a champion on clean {size}x{size} parts (at most {settings.epochs} epochs)")
    split = parts_split(seed, size)
    files, golden = bootstrap_models(split.train, split.golden, work_dir / "models", settings.epochs, progress=False,
                                     config=config, roles=("champion",))
    config = config.with_overrides(yield_mode="pass_rate", ok_class=OK_CLASS, yield_threshold=None)
    line = ProductionLine(with_ok_share(split.production, settings.ok_share, seed), seed,
                          DriftSpec(settings.drift_kind, settings.drift_severity, start=config.recent_window))
    with local_stack(work_dir / "stack", mlflow_server=False) as stack:
        serve_models(stack, {"champion": files["champion"]}, "1")
        traffic = Traffic(stack.client, stack.store_dir, audit_share, seed, concurrency)
        phases = []
        for name in ("clean", f"{settings.drift_kind} drift"):
            answers = traffic.send(line.take(config.recent_window))
            phases.append(_judge(name, answers, stack.store_dir, config))
            say(f"parts line, {name}: {len(answers)} parts, pass rate {phases[-1].pass_rate:.3f} "
                f"(truly OK {phases[-1].ok_share:.3f}); monitor: {phases[-1].reason}")
    return PassRateSummary(OK_CLASS, size, settings.ok_share, golden["champion"], phases, time.monotonic() - started)


def _judge(name: str, answers: list[Answer], store_dir: Path, config: PipelineConfig) -> PassRatePhase:
    """The monitor on the window just played, as the pipeline's monitor stage would run it."""
    feedback = store_dir / FEEDBACK_NAME
    result = check_yield(store_dir, config.recent_window, config.yield_threshold, config.yield_drop_tolerance,
                         config.yield_floor, config.yield_confidence,
                         feedback_log=feedback if feedback.exists() else None,
                         yield_mode=config.yield_mode, ok_class=config.ok_class)
    truth = np.array([answer.true_label for answer in answers])
    labels = np.array([answer.label for answer in answers])
    return PassRatePhase(name, len(answers), result.yield_value,
                         float((truth == PART_CLASSES.index(OK_CLASS)).mean()), float((labels == truth).mean()),
                         result.mode, result.threshold_used, result.retrain, result.reason)
