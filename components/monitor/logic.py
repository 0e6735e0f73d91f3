"""monitor: the champion's yield over its most recent predictions, and whether to retrain.

Yield is, by `yield_mode`, the share of predictions made with confidence >= `confidence`
("confidence": model health), the share of parts classified `ok_class` ("pass_rate": the plant's
own yield), the champion's accuracy estimated without labels ("estimated_accuracy"), or its
accuracy against ground-truth feedback ("accuracy"); feedback covering every prediction of the
window is used whatever the mode. The window is the newest `recent_window` predictions of the model version that made the
newest prediction (the current champion): predictions of an earlier champion say nothing about
this one, so right after a deploy the monitor waits for a full window instead of retraining
again because of the old model's mistakes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ctloop import alerts, slack
from ctloop.config import MIN_SLICE_RECORDS, YIELD_MODES
from ctloop.estimate import atc_estimate
from ctloop.images import write_atomic
from ctloop.wire import FEEDBACK_NAME, record_slice
from serving.store import PredictionLogError, newest_version, read_jsonl, read_newest, read_oldest

__all__ = ["MonitorResult", "PredictionLogError", "check_store_yield", "check_yield"]


Mode = Literal["confidence", "pass_rate", "estimated_accuracy", "accuracy"]

@dataclass(frozen=True)
class MonitorResult:
    """The retrain decision and the figures it was made from.

    Attributes:
        retrain: whether the pipeline should retrain.
        yield_value: yield of the window (of the partial window when it is not full yet).
        baseline: yield of the champion's first full window; None when a fixed threshold is used
            or the window is not full.
        threshold_used: the value the yield was compared with; None when there was no comparison.
        mode: the yield measured: the configured yield_mode, or "accuracy" when ground-truth
            feedback covered the window, or "confidence" when the configured mode could not be
            measured (estimated_accuracy without an ATC threshold, accuracy without full feedback).
        window_size: predictions in the window.
        model_version: the champion version whose predictions form the window.
        reason: one sentence with the numbers behind the decision.
        truncated_tail: the log's last line was cut short (a writer died mid-line) and skipped.
        broken_lines: earlier lines that were not JSON (interrupted records), skipped.
        estimated_accuracy: the champion's accuracy on the window estimated without labels (ATC,
            ctloop.estimate, from the threshold its records carry); None when they carry none.
        audited: the window's predictions with ground-truth feedback (audited parts).
        audited_accuracy: the champion's accuracy on those, the truth to hold the estimate
            against; None without any.
        lost_records: predictions answered while the store could not take them (a full disk),
            counted by the writers of the segments read; the monitor alerts on any.
        slices: per named slice (the client's X-Ctloop-Slice: a line, a camera) with at least
            MIN_SLICE_RECORDS predictions in the window: count, yield_value, threshold,
            whether it tripped, and estimated_accuracy when its records carry an ATC threshold;
            a tripped slice retrains on its own predictions.
    """

    retrain: bool
    yield_value: float
    baseline: float | None
    threshold_used: float | None
    mode: Mode
    window_size: int
    model_version: str
    reason: str
    truncated_tail: bool = False
    broken_lines: int = 0
    estimated_accuracy: float | None = None
    audited: int = 0
    audited_accuracy: float | None = None
    lost_records: int = 0
    slices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, float]:
        """The figures as scalar metrics; `baseline` only when the baseline rule produced one."""
        figures = {"yield_value": self.yield_value, "window_size": float(self.window_size)}
        if self.baseline is not None:
            figures["baseline"] = self.baseline
        if self.estimated_accuracy is not None:
            figures["estimated_accuracy"] = self.estimated_accuracy
        if self.audited_accuracy is not None:
            figures["audited_accuracy"] = self.audited_accuracy
            figures["audited"] = float(self.audited)
        if self.lost_records:
            figures["lost_records"] = float(self.lost_records)
        for name, slice_figures in self.slices.items():
            figures[f"slice_{name}_yield"] = slice_figures["yield_value"]
            if "estimated_accuracy" in slice_figures:
                figures[f"slice_{name}_estimated_accuracy"] = slice_figures["estimated_accuracy"]
        return figures


def check_store_yield(
    store_dir: Path,
    recent_window: int,
    yield_threshold: float,
    use_yield_threshold: bool,
    yield_drop_tolerance: float,
    yield_floor: float,
    confidence: float,
    window_out: Path,
    decision_out: Path,
    yield_mode: str = "confidence",
    ok_class: str | None = None,
) -> MonitorResult:
    """The monitor stage on a prediction store: check_yield over its log, with its feedback when
    there is any, writing the window (for collect) and the decision as JSON (for notify).

    kfp parameters cannot be None, so the pipeline passes the threshold together with
    `use_yield_threshold`; False means the baseline rule. A store without feedback.jsonl simply
    has no ground truth yet, which is not an error.

    Args:
        store_dir: the prediction store root holding its segments (and feedback.jsonl if any).
        recent_window: how many of the champion's newest predictions form the window.
        yield_threshold: retrain when yield < this, if `use_yield_threshold`.
        use_yield_threshold: False ignores `yield_threshold` and applies the baseline rule.
        yield_drop_tolerance: baseline rule: allowed drop below the champion's baseline yield.
        yield_floor: baseline rule: never tolerate a yield below this.
        confidence: a prediction counts towards the confidence yield when its confidence >= this.
        window_out: where to write the window's records (JSONL).
        decision_out: where to write MonitorResult.to_dict() (JSON); notify's announce_retrain
            reads it.
        yield_mode: confidence, pass_rate, estimated_accuracy or accuracy (see the module's
            docstring; ground-truth feedback, when it covers the window, wins whatever the mode).
        ok_class: pass_rate: the class name of a good part.

    Returns:
        The decision and its figures; its reason is also printed, for the stage's log.
    """
    store_dir = Path(store_dir)
    feedback = store_dir / FEEDBACK_NAME
    result = check_yield(
        store_dir, recent_window, yield_threshold if use_yield_threshold else None,
        yield_drop_tolerance, yield_floor, confidence,
        feedback_log=feedback if feedback.exists() else None, window_out=Path(window_out),
        yield_mode=yield_mode, ok_class=ok_class,
    )
    write_atomic(Path(decision_out), json.dumps(result.to_dict()).encode("utf-8"))
    print(result.reason)
    if result.lost_records:
        alerts.deliver(store_losing_records(result.lost_records, result.model_version))
    return result


def store_losing_records(lost: int, version: str) -> slack.Message:
    """Serving goes on when the store cannot take records, so the monitor is where it shows."""
    text = (f"{lost} prediction(s) by champion v{slack.escape(version)} were answered but not stored: the "
            "prediction store's disk was full or failing. Retraining sees only what was stored; free space "
            "or lower the retention (README: the prediction store).")
    return slack.message(f"Prediction store losing records: {lost}", [slack.header("Prediction store losing records"),
                                                                       slack.section(text)], None)


def check_yield(
    store_dir: Path,
    recent_window: int,
    yield_threshold: float | None,
    yield_drop_tolerance: float,
    yield_floor: float,
    confidence: float,
    feedback_log: Path | None = None,
    window_out: Path | None = None,
    yield_mode: str = "confidence",
    ok_class: str | None = None,
) -> MonitorResult:
    """Decide whether the champion's recent yield calls for retraining.

    Args:
        store_dir: the prediction store (serving/store.py reads its newest segments, and for the
            baseline the version's first ones).
        recent_window: how many of the champion's newest predictions form the window.
        yield_threshold: retrain when yield < this; None: compare with the champion's baseline.
        yield_drop_tolerance: with no threshold, retrain when yield < baseline - this ...
        yield_floor: ... or below this floor, whichever is higher.
        confidence: a prediction counts towards the confidence yield when its confidence >= this.
        feedback_log: optional JSONL of ground truth, `{"request_id": str, "label": int}` per line
            (plus `"item": int` for images after the first of a batch request).
        window_out: where to write the window's records as JSONL, for the collect stage; each
            record gets `feedback_label` when feedback gave its true label.
        yield_mode: what yield is: confidence, pass_rate, estimated_accuracy or accuracy.
        ok_class: pass_rate: the class name of a good part (required then).

    Returns:
        The decision and its figures.

    Raises:
        PredictionLogError: the store holds no prediction, or a malformed record; the message
            names the file and line.
        ValueError: a parameter is out of range.
    """
    _check_parameters(recent_window, yield_threshold, yield_drop_tolerance, yield_floor, confidence)
    if yield_mode not in YIELD_MODES:
        raise ValueError(f"yield_mode must be one of {', '.join(YIELD_MODES)}, got {yield_mode!r}")
    if yield_mode == "pass_rate" and not ok_class:
        raise ValueError("yield_mode pass_rate needs ok_class: the class name that means a good part")
    version = newest_version(store_dir)
    recent = read_newest(store_dir, recent_window, version) if version is not None else None
    if recent is None or not recent.records:
        raise PredictionLogError(
            f"{store_dir}: no complete prediction in the store; serve some traffic through the "
            "champion before monitoring"
        )
    window = recent.records
    truncated, broken = bool(recent.cut_short), recent.broken
    full = len(window) == recent_window
    baseline_window = read_oldest(store_dir, recent_window, version).records if yield_threshold is None and full else []
    feedback = _read_feedback(feedback_log) if feedback_log is not None else {}

    needed = window + baseline_window
    covered = bool(feedback) and all(_key(record) in feedback for record in needed)
    estimable = _atc_threshold(needed) is not None
    mode, fallback = _measured_mode(yield_mode, covered, estimable)
    value = _yield(window, mode, confidence, feedback, ok_class)
    measure = _describe(mode, confidence, len(window), version, ok_class)
    estimated = _estimated_accuracy(window)
    notes = _skipped_note(truncated, broken) + _lost_note(recent.lost) + fallback
    if estimated is not None and mode != "estimated_accuracy":
        notes += f"; estimated accuracy (ATC) {estimated:.3f}"
    audited = [record for record in window if _key(record) in feedback]
    audited_accuracy = _yield(audited, "accuracy", confidence, feedback, ok_class) if audited else None
    if audited_accuracy is not None and mode != "accuracy":
        notes += f"; accuracy on the {len(audited)} audited parts {audited_accuracy:.3f}"
    figures = dict(estimated_accuracy=estimated, audited=len(audited), audited_accuracy=audited_accuracy,
                   lost_records=recent.lost)

    if not full:
        if window_out is not None:
            _write_window(window_out, window, feedback)
        return MonitorResult(
            retrain=False, yield_value=value, baseline=None, threshold_used=yield_threshold, mode=mode,
            window_size=len(window), model_version=version, truncated_tail=truncated,
            broken_lines=len(broken), **figures,
            reason=(
                f"only {len(window)} of {recent_window} predictions by model version {version} so far "
                f"(yield {value:.3f} as {measure}); waiting for a full window{notes}."
            ),
        )
    if yield_threshold is not None:
        baseline, threshold = None, float(yield_threshold)
        rule = f"the threshold {threshold:.3f}"
    else:
        baseline = _yield(baseline_window, mode, confidence, feedback, ok_class)
        threshold = max(baseline - yield_drop_tolerance, yield_floor)
        rule = (
            f"{threshold:.3f} = max(baseline {baseline:.3f} - tolerance {yield_drop_tolerance:.3f}, "
            f"floor {yield_floor:.3f})"
        )
    retrain = value < threshold
    verdict = f"is below {rule}: retrain" if retrain else f"is not below {rule}: no retrain"
    judge = functools.partial(_yield, mode=mode, confidence=confidence, feedback=feedback, ok_class=ok_class)
    slices = _judge_slices(window, baseline_window, judge, threshold, yield_drop_tolerance, yield_floor)
    tripped = [name for name, figures_ in slices.items() if figures_["retrain"]]
    if tripped and not retrain:
        window = [record for record in window if record_slice(record) in tripped]
        verdict = (f"is not below {rule}, but slice(s) {', '.join(tripped)} are below theirs: "
                   f"retrain on their {len(window)} predictions")
    if window_out is not None:
        _write_window(window_out, window, feedback)
    return MonitorResult(
        retrain=retrain or bool(tripped), yield_value=value, baseline=baseline, threshold_used=threshold, mode=mode,
        window_size=len(window), model_version=version, truncated_tail=truncated,
        broken_lines=len(broken), **figures, slices=slices,
        reason=f"yield {value:.3f} as {measure} {verdict}{notes}{_slices_note(slices)}.",
    )


def _judge_slices(window: list[dict[str, Any]], baseline_window: list[dict[str, Any]],
                  judge: Callable[[Sequence[dict[str, Any]]], float], threshold: float,
                  tolerance: float, floor: float) -> dict[str, dict[str, Any]]:
    """Each named slice (line, camera) with at least MIN_SLICE_RECORDS predictions in the window,
    judged on its own: a drift on one camera is otherwise diluted by the others. With the
    baseline rule (`baseline_window` given) a slice is held against its own baseline."""
    names = sorted({record_slice(record) for record in window})
    if names == [""]:
        return {}
    judged = {}
    for name in names:
        records = [record for record in window if record_slice(record) == name]
        if len(records) < MIN_SLICE_RECORDS:
            continue
        own = [record for record in baseline_window if record_slice(record) == name]
        limit = max(judge(own) - tolerance, floor) if len(own) >= MIN_SLICE_RECORDS else threshold
        value = judge(records)
        judged[name or "(none)"] = {"count": len(records), "yield_value": value, "threshold": limit,
                                   "retrain": value < limit}
        estimated = _estimated_accuracy(records)
        if estimated is not None:  # the slice's own ATC estimate, when its records carry the threshold
            judged[name or "(none)"]["estimated_accuracy"] = estimated
    return judged


def _slices_note(slices: dict[str, dict[str, Any]]) -> str:
    if not slices:
        return ""
    shown = [f"{name} {figures['yield_value']:.3f}" + (f" < {figures['threshold']:.3f}" if figures["retrain"] else "")
             + f" (n={figures['count']})" for name, figures in slices.items()]
    return "; slices: " + ", ".join(shown)


def _atc_threshold(records: Sequence[dict[str, Any]]) -> float | None:
    """The ATC threshold every record carries (one version: one threshold); None if any lacks it."""
    thresholds = {record.get("atc_threshold") for record in records}
    if not records or None in thresholds or len(thresholds) != 1:
        return None
    return thresholds.pop()


def _estimated_accuracy(window: Sequence[dict[str, Any]]) -> float | None:
    """ATC over the window, when its records carry their model's threshold."""
    threshold = _atc_threshold(window)
    if threshold is None:
        return None
    return atc_estimate(np.array([record["confidence"] for record in window]), threshold)


def _skipped_note(truncated: bool, broken: list[str]) -> str:
    notes = ["a segment's last line was cut short and skipped"] if truncated else []
    if broken:
        shown = ", ".join(broken[:5]) + (", ..." if len(broken) > 5 else "")
        notes.append(f"{len(broken)} interrupted record(s) skipped ({shown})")
    return "".join(f"; {note}" for note in notes)


def _lost_note(lost: int) -> str:
    return f"; {lost} prediction(s) answered but not stored (the store's disk was full or failing)" if lost else ""


def _read_feedback(path: Path) -> dict[tuple[str, int], int]:
    """Ground truth by (request_id, item); a later line for the same sample overrides an earlier
    one (a corrected label)."""
    lines, _, _ = read_jsonl(path, "feedback log")
    feedback: dict[tuple[str, int], int] = {}
    for number, line in enumerate(lines, start=1):
        expected = 'expected {"request_id": str, "label": int >= 0} with an optional "item": int >= 0'
        if not isinstance(line, dict):
            raise PredictionLogError(f"{path}:{number}: {expected}, got {json.dumps(line)}")
        request_id, label, item = line.get("request_id"), line.get("label"), line.get("item", 0)
        valid = (
            isinstance(request_id, str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (label, item))
        )
        if not valid:
            raise PredictionLogError(f"{path}:{number}: {expected}, got {json.dumps(line)}")
        feedback[(request_id, item)] = label
    return feedback


def _key(record: dict[str, Any]) -> tuple[str, int]:
    return record["request_id"], record.get("item", 0)


def _measured_mode(yield_mode: str, covered: bool, estimable: bool) -> tuple[Mode, str]:
    """The mode measured and, when it is not the configured one for want of data, a note saying so."""
    if covered:
        return "accuracy", ""
    if yield_mode == "accuracy":
        return "confidence", "; yield_mode accuracy, but feedback does not cover the window yet: confidence yield used"
    if yield_mode == "estimated_accuracy" and not estimable:
        return "confidence", ("; yield_mode estimated_accuracy, but the records carry no ATC threshold: "
                              "confidence yield used")
    return cast(Mode, yield_mode), ""


def _yield(records: Sequence[dict[str, Any]], mode: Mode, confidence: float,
           feedback: dict[tuple[str, int], int], ok_class: str | None) -> float:
    if not records:
        return 0.0
    if mode == "estimated_accuracy":
        return _estimated_accuracy(records)
    if mode == "accuracy":
        hits = sum(record["label"] == feedback[_key(record)] for record in records)
    elif mode == "pass_rate":
        hits = sum(record["class_name"] == ok_class for record in records)
    else:
        hits = sum(record["confidence"] >= confidence for record in records)
    return hits / len(records)


def _describe(mode: Mode, confidence: float, count: int, version: str, ok_class: str | None) -> str:
    what = {"accuracy": "accuracy against feedback", "estimated_accuracy": "accuracy estimated by ATC",
            "pass_rate": f"pass rate (share classified {ok_class!r})"}.get(
        mode, f"share with confidence >= {confidence:.2f}")
    return f"{what} over the last {count} predictions of model version {version}"


def _write_window(path: Path, window: list[dict[str, Any]], feedback: dict[tuple[str, int], int]) -> None:
    lines = []
    for record in window:
        if _key(record) in feedback:
            record = {**record, "feedback_label": feedback[_key(record)]}
        lines.append(json.dumps(record) + "\n")
    write_atomic(path, "".join(lines).encode("utf-8"))


def _check_parameters(recent_window: int, yield_threshold: float | None, yield_drop_tolerance: float,
                      yield_floor: float, confidence: float) -> None:
    if isinstance(recent_window, bool) or not isinstance(recent_window, int) or recent_window < 1:
        raise ValueError(f"recent_window must be an int >= 1, got {recent_window!r}")
    ranged = {
        "yield_threshold": yield_threshold,
        "yield_drop_tolerance": yield_drop_tolerance,
        "yield_floor": yield_floor,
        "confidence": confidence,
    }
    for name, value in ranged.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
