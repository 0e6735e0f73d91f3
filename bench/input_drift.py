"""7. Input drift: how many parts the drift trigger needs to notice a drift, and how often it trips
on a clean line, in-process (no servers) with the bench's bootstrapped champion.

The trigger as the pipeline's drift stage runs it: the reference is the champion's first full
window (its first `recent_window` parts), the window its newest `recent_window` parts, both
embedded by the champion (`ctloop.modelfile.embed`) and compared by `mmd_test` with
`drift_permutations` relabellings; it trips when the p-value is at most `drift_level`.

Each stream is a seeded production line watched by a monitoring run every `drift_check_every`
parts: the reference, then clean parts whose checks (on windows clear of the reference) count
towards the false-alarm rate, then drift from a part that falls at a random point between two
checks. The delay is the number of parts from the drift's first part to the first check that
trips; windows that mix clean and drifted parts count. The yield trigger (confidence yield, the
config's threshold or baseline rule) is judged on the same checks for comparison.
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
from torch import nn

from bench.settings import BenchSettings
from ctloop.config import PipelineConfig
from ctloop.drift import DriftKind
from ctloop.images import ImageSet
from ctloop.mmd import mmd_test
from ctloop.modelfile import embed, load_model, predict_proba
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.bootstrap import BootstrapResult

TRIGGERS = ("drift", "yield")


def bench_input_drift(boot: BootstrapResult, settings: BenchSettings) -> dict[str, object]:
    """Per drift kind: false alarms on its streams' clean windows and, per severity, the delays."""
    config, window, step = settings.config, settings.config.recent_window, settings.drift_check_every
    level, permutations = config.drift_level, config.drift_permutations
    if window % step:
        raise ValueError(f"recent_window ({window}) must be a multiple of drift_check_every ({step})")
    champion = load_model(boot.model_files["champion"])[0]
    pool = ImageSet.load(boot.production_pool)
    clock = {"tests": 0, "seconds": 0.0}
    kinds = {}
    for kind_number, kind in enumerate(settings.drift_kinds):
        seeds = [_seed(settings.seed, kind_number, repeat) for repeat in range(settings.drift_streams)]
        # The clean part of a stream does not depend on the severity: the first severity's streams judge it.
        streams = [[_stream(champion, pool, kind, severity, settings, seed, clock, clean=number == 0) for seed in seeds]
                   for number, severity in enumerate(settings.drift_severities)]
        kinds[kind] = {
            "false_alarms": {trigger: _false_alarms(stream[trigger]["clean"] for stream in streams[0])
                             for trigger in TRIGGERS},
            "severities": {str(severity): {
                **{trigger: _delays([stream[trigger]["delay"] for stream in rows]) for trigger in TRIGGERS},
                "champion_accuracy": _mean([stream["accuracy"]["drifted"] for stream in rows]),
                "champion_yield": _mean([stream["confident"]["drifted"] for stream in rows]),
            } for severity, rows in zip(settings.drift_severities, streams)},
            "champion_accuracy_clean": _mean([stream["accuracy"]["clean"] for stream in streams[0]]),
            "champion_yield_clean": _mean([stream["confident"]["clean"] for stream in streams[0]]),
        }
    return {
        "window": window,
        "check_every": step,
        "horizon": _horizon(config),
        "streams": settings.drift_streams,
        "clean_checks_per_stream": settings.drift_clean_checks,
        "drift_level": level,
        "drift_permutations": permutations,
        "yield_rule": _yield_rule(config),
        "seconds_per_test": round(clock["seconds"] / max(clock["tests"], 1), 4),
        "kinds": kinds,
        "false_alarms": {trigger: _pooled([kind["false_alarms"][trigger] for kind in kinds.values()])
                         for trigger in TRIGGERS},
    }


def _seed(seed: int, kind_number: int, repeat: int) -> int:
    """A stream's own seed: every kind and repeat sees other parts (the severities of one kind the same)."""
    return seed * 100_000 + (kind_number + 1) * 1000 + repeat


def _horizon(config: PipelineConfig) -> int:
    """Parts followed after the drift starts before the stream counts as missed: two windows."""
    return 2 * config.recent_window


def _stream(champion: nn.Module, pool: ImageSet, kind: DriftKind, severity: float, settings: BenchSettings,
            seed: int, clock: dict[str, float], clean: bool) -> dict[str, dict[str, object]]:
    """One stream's checks: per trigger, its verdicts on the clean windows (when `clean`) and the
    delay (None: missed within the horizon); and the champion's accuracy and confidence yield on its
    clean and drifted parts."""
    config, window, step = settings.config, settings.config.recent_window, settings.drift_check_every
    first_clean = 2 * window  # the first window clear of the reference
    last_clean = first_clean + (settings.drift_clean_checks - 1) * step
    start = last_clean + int(np.random.default_rng(seed).integers(step))  # a random point between two checks
    parts = ProductionLine(pool, seed, DriftSpec(kind, severity, start)).take(start + _horizon(config))
    features = embed(champion, parts.images)
    probabilities = predict_proba(champion, parts.images)
    confident = probabilities.max(axis=1) >= config.yield_confidence
    right = probabilities.argmax(axis=1) == parts.labels
    threshold = _yield_threshold(config, float(confident[:window].mean()))
    level, permutations = config.drift_level, config.drift_permutations

    def drift_trips(end: int) -> bool:
        began = time.perf_counter()
        test = mmd_test(features[:window], features[end - window:end], permutations=permutations)
        clock["seconds"] += time.perf_counter() - began
        clock["tests"] += 1
        return test.drifted(level)

    def yield_trips(end: int) -> bool:
        return float(confident[end - window:end].mean()) < threshold

    clean_ends = range(first_clean, last_clean + 1, step) if clean else range(0)
    drifted_ends = range(last_clean + step, len(parts) + 1, step)
    return {
        **{trigger: {"clean": [trips(end) for end in clean_ends],
                     "delay": next((end - start for end in drifted_ends if trips(end)), None)}
           for trigger, trips in (("drift", drift_trips), ("yield", yield_trips))},
        "accuracy": {"clean": float(right[:start].mean()), "drifted": float(right[start:].mean())},
        "confident": {"clean": float(confident[:start].mean()), "drifted": float(confident[start:].mean())},
    }


def _yield_threshold(config: PipelineConfig, baseline: float) -> float:
    """The monitor's rule: retrain when the yield is below this (the baseline is the first window's yield)."""
    if config.yield_threshold is not None:
        return config.yield_threshold
    return max(baseline - config.yield_drop_tolerance, config.yield_floor)


def _yield_rule(config: PipelineConfig) -> str:
    share = f"share of parts with confidence >= {config.yield_confidence:g}"
    if config.yield_threshold is not None:
        return f"{share} is below {config.yield_threshold:g}"
    return (f"{share} is below max(first window's - {config.yield_drop_tolerance:g}, "
            f"{config.yield_floor:g})")


def _false_alarms(verdicts: Iterable[list[bool]]) -> dict[str, object]:
    tripped = [verdict for stream in verdicts for verdict in stream]
    return _rate(sum(tripped), len(tripped))


def _pooled(figures: list[dict[str, object]]) -> dict[str, object]:
    return _rate(sum(int(f["tripped"]) for f in figures), sum(int(f["checks"]) for f in figures))


def _rate(tripped: int, checks: int) -> dict[str, object]:
    return {"tripped": tripped, "checks": checks, "rate": round(tripped / checks, 4) if checks else None}


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4)


def _delays(delays: list[int | None]) -> dict[str, object]:
    """Median and max over the streams, a missed stream counting as longer than any: None when
    the median (or the max) is a missed one."""
    found = sorted(delay for delay in delays if delay is not None)
    ranked = found + [float("inf")] * (len(delays) - len(found))
    median = float(np.median(ranked)) if ranked else float("inf")
    return {
        "detected": len(found),
        "streams": len(delays),
        "median": None if median == float("inf") else median,
        "max": found[-1] if found and len(found) == len(delays) else None,
        "delays": delays,
    }
