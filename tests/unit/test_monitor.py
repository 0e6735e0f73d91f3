"""monitor: yield, baseline rule, feedback, and logs that are broken in every way a writer can."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ctloop import wire
from components.monitor.logic import MonitorResult, PredictionLogError, check_store_yield, check_yield

DEFAULTS = dict(recent_window=10, yield_threshold=0.7, yield_drop_tolerance=0.05, yield_floor=0.6, confidence=0.9)


def run(store_dir: Path, **overrides):
    return check_yield(store_dir, **{**DEFAULTS, **overrides})


@pytest.mark.parametrize(
    ("confident", "retrain"),
    [(6, True), (7, False), (10, False), (0, True)],
)
def test_fixed_threshold_counts_confident_share_of_the_newest_window(prediction_store, confident, retrain):
    prediction_store.log_many([0.1] * 5)  # older predictions, outside the window
    prediction_store.log_many([0.95] * confident + [0.5] * (10 - confident))
    result = run(prediction_store.root)
    assert result.retrain is retrain
    assert result.yield_value == pytest.approx(confident / 10)
    assert (result.threshold_used, result.baseline, result.mode) == (0.7, None, "confidence")
    assert (result.window_size, result.model_version) == (10, "1")
    verdict = "is below the threshold 0.700: retrain" if retrain else "is not below the threshold 0.700: no retrain"
    assert result.reason == (
        f"yield {confident / 10:.3f} as share with confidence >= 0.90 over the last 10 predictions "
        f"of model version 1 {verdict}."
    )


def test_confidence_equal_to_the_bar_counts(prediction_store):
    prediction_store.log_many([0.9] * 10)
    assert run(prediction_store.root).yield_value == 1.0


def test_baseline_rule_compares_with_the_champions_first_window(prediction_store):
    prediction_store.log_many([0.1] * 10, version="1")  # the previous champion: not this one's baseline
    prediction_store.log_many([0.95] * 9 + [0.1], version="2")  # baseline 0.9
    prediction_store.log_many([0.95] * 8 + [0.1] * 2, version="2")  # recent 0.8 < 0.85
    result = run(prediction_store.root, yield_threshold=None)
    assert result.retrain is True
    assert (result.yield_value, result.baseline, result.model_version) == (0.8, 0.9, "2")
    assert result.threshold_used == pytest.approx(0.85)
    assert "is below 0.850 = max(baseline 0.900 - tolerance 0.050, floor 0.600): retrain" in result.reason


def test_baseline_rule_within_tolerance_does_not_retrain(prediction_store):
    prediction_store.log_many([0.95] * 9 + [0.1])  # baseline 0.9
    prediction_store.log_many([0.95] * 9 + [0.1])  # recent 0.9
    result = run(prediction_store.root, yield_threshold=None)
    assert (result.retrain, result.baseline) == (False, 0.9)


def test_floor_wins_over_a_low_baseline(prediction_store):
    prediction_store.log_many([0.95] * 5 + [0.1] * 5)  # baseline 0.5; 0.5 - 0.05 < floor 0.6
    result = run(prediction_store.root, yield_threshold=None)
    assert result.threshold_used == 0.6
    assert result.retrain is True  # the window is the baseline window here: 0.5 < 0.6


def test_window_holds_only_the_current_champions_predictions(prediction_store):
    prediction_store.log_many([0.1] * 20, version="1")
    prediction_store.log_many([0.95] * 4, version="2")
    result = run(prediction_store.root)
    assert result.retrain is False
    assert (result.window_size, result.yield_value, result.model_version) == (4, 1.0, "2")
    assert result.reason.startswith("only 4 of 10 predictions by model version 2 so far (yield 1.000")


def test_too_few_predictions_never_retrain(prediction_store):
    prediction_store.log_many([0.1] * 3)
    result = run(prediction_store.root, yield_threshold=None)
    assert (result.retrain, result.baseline, result.threshold_used) == (False, None, None)
    assert "only 3 of 10 predictions" in result.reason


def test_window_of_one_class_is_fine(prediction_store):
    prediction_store.log_many([0.95] * 10, label=2)
    assert run(prediction_store.root).retrain is False


def test_accuracy_mode_when_feedback_covers_the_window(prediction_store, tmp_path):
    records = prediction_store.log_many([0.99] * 10, label=1)
    feedback = tmp_path / "feedback.jsonl"
    truth = [1] * 6 + [0] * 4  # confident, but 4 wrong
    feedback.write_text("".join(json.dumps({"request_id": r["request_id"], "label": t}) + "\n"
                                for r, t in zip(records, truth)))
    result = run(prediction_store.root, feedback_log=feedback)
    assert (result.mode, result.yield_value, result.retrain) == ("accuracy", 0.6, True)
    assert "accuracy against feedback over the last 10 predictions" in result.reason


def test_partial_feedback_falls_back_to_confidence(prediction_store, tmp_path):
    records = prediction_store.log_many([0.99] * 10, label=1)
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps({"request_id": records[0]["request_id"], "label": 0}) + "\n")
    result = run(prediction_store.root, feedback_log=feedback)
    assert (result.mode, result.yield_value) == ("confidence", 1.0)


def test_feedback_is_matched_per_item_of_a_batch_request(prediction_store, tmp_path):
    for item in range(10):
        prediction_store.log(0.99, label=1, request_id="batch", item=item)
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"request_id": "batch", "item": i, "label": i % 2}) + "\n"
                                for i in range(10)))
    result = run(prediction_store.root, feedback_log=feedback)
    assert (result.mode, result.yield_value) == ("accuracy", 0.5)


def test_window_out_holds_the_window_with_feedback_labels(prediction_store, tmp_path):
    prediction_store.log_many([0.2] * 3)
    records = prediction_store.log_many([0.95] * 10)
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps({"request_id": records[-1]["request_id"], "label": 2}) + "\n")
    out = tmp_path / "out" / "window.jsonl"
    run(prediction_store.root, feedback_log=feedback, window_out=out)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["request_id"] for w in written] == [r["request_id"] for r in records]
    assert written[-1]["feedback_label"] == 2
    assert "feedback_label" not in written[0]
    assert written[0]["sample"] == records[0]["sample"]


def test_truncated_last_line_is_skipped_and_reported(prediction_store):
    prediction_store.log_many([0.95] * 10)
    prediction_store.raw('{"request_id": "req-x", "time": 17000')
    result = run(prediction_store.root)
    assert (result.truncated_tail, result.window_size, result.yield_value) == (True, 10, 1.0)
    assert result.reason.endswith("; a segment's last line was cut short and skipped.")


def test_interrupted_record_in_the_middle_is_skipped_and_reported(prediction_store):
    """A line that is not JSON costs that one prediction, not every later monitor run."""
    prediction_store.log_many([0.95] * 2)
    prediction_store.raw('{"request_id": "req-x", "time": 17000\n')
    prediction_store.log_many([0.95] * 2)
    result = run(prediction_store.root)
    assert (result.broken_lines, result.window_size, result.truncated_tail) == (1, 4, False)
    assert result.reason.endswith(f"; 1 interrupted record(s) skipped ({prediction_store.log_path.name}:3).")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"request_id": "a", "server_id": "t", "model_version": "1", "label": 0, "confidence": 0.5}',
         "prediction record has no 'sample'"),
        ('{"request_id": "a", "server_id": "t", "model_version": 1, "label": 0, "confidence": 0.5, "sample": "s"}',
         "'model_version' must be str, got 1"),
        ('{"request_id": "a", "server_id": "t", "model_version": "1", "label": true, "confidence": 0.5, '
         '"sample": "s"}',
         "'label' must be int, got True"),
        ('{"request_id": "a", "server_id": "t", "model_version": "1", "label": 0, "confidence": 1.5, "sample": "s", '
         '"class_name": "0"}',
         r"'confidence' must be in \[0, 1\], got 1.5"),
    ],
)
def test_malformed_record_names_file_and_line(prediction_store, line, message):
    prediction_store.log(0.95)
    prediction_store.raw(line + "\n")
    with pytest.raises(PredictionLogError, match=rf"^{prediction_store.log_path}:2: {message}"):
        run(prediction_store.root)


def test_a_store_without_segments_is_an_error_naming_it(tmp_path):
    with pytest.raises(PredictionLogError, match=rf"^{tmp_path}/nope: no complete prediction in the store"):
        run(tmp_path / "nope")


@pytest.mark.parametrize("content", ["", '{"request_id": "cut'])
def test_an_empty_segment_is_an_error_naming_the_store(prediction_store, content):
    prediction_store.raw(content)
    with pytest.raises(PredictionLogError, match=rf"^{prediction_store.root}: no complete prediction in the store"):
        run(prediction_store.root)


def test_the_window_is_read_from_the_newest_segments_only(prediction_store):
    """Memory follows the window: segments last written before the window's oldest record are
    never opened (here, one that would not even parse)."""
    old = prediction_store.root / wire.segment_log(wire.segment_stem(1, "champion", "2", "old-writer"))
    old.write_text("not json at all\n")
    os.utime(old, (1_600_000_000, 1_600_000_000))
    prediction_store.log_many([0.95] * 10, version="2")
    result = run(prediction_store.root)
    assert (result.model_version, result.window_size, result.broken_lines) == ("2", 10, 0)
    assert run(prediction_store.root, recent_window=11).broken_lines == 1  # one more: the old segment is read


def test_records_the_writers_could_not_store_are_reported_and_alerted(prediction_store, tmp_path, monkeypatch):
    monkeypatch.setenv("CTLOOP_SLACK_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    prediction_store.log_many([0.95] * 5)
    prediction_store.raw(json.dumps({"lost": 7, "time": 1_700_000_005.5, "since": 1_700_000_005.1}) + "\n")
    prediction_store.log_many([0.95] * 5)
    result = check_store(prediction_store, tmp_path)
    assert (result.lost_records, result.window_size) == (7, 10)
    assert "7 prediction(s) answered but not stored" in result.reason
    [alert] = [json.loads(line) for line in (tmp_path / "outbox.jsonl").read_text().splitlines()]
    assert "Prediction store losing records: 7" in json.dumps(alert)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('{"request_id": "req-1"}', '{"request_id": "req-1"}'),
        ('{"request_id": "req-1", "label": "cat"}', '"label": "cat"'),
        ('{"request_id": 7, "label": 1}', '"request_id": 7'),
        ('{"request_id": "req-1", "label": -2}', '"label": -2'),
        ('"req-1,1"', '"req-1,1"'),
    ],
)
def test_malformed_feedback_names_file_and_line(prediction_store, tmp_path, line, shown):
    prediction_store.log_many([0.95] * 10)
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps({"request_id": "req-2", "label": 0}) + "\n" + line + "\n")
    with pytest.raises(PredictionLogError, match=rf'^{feedback}:2: expected {{"request_id": str') as caught:
        run(prediction_store.root, feedback_log=feedback)
    assert shown in str(caught.value)


def test_missing_feedback_file_is_an_error(prediction_store, tmp_path):
    prediction_store.log_many([0.95] * 10)
    with pytest.raises(PredictionLogError, match="^feedback log .*/fb.jsonl does not exist$"):
        run(prediction_store.root, feedback_log=tmp_path / "fb.jsonl")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recent_window": 0}, "recent_window must be an int >= 1, got 0"),
        ({"yield_threshold": 1.5}, r"yield_threshold must be in \[0, 1\], got 1.5"),
        ({"confidence": -0.1}, r"confidence must be in \[0, 1\], got -0.1"),
    ],
)
def test_parameters_out_of_range(prediction_store, overrides, message):
    prediction_store.log_many([0.95] * 10)
    with pytest.raises(ValueError, match=f"^{message}$"):
        run(prediction_store.root, **overrides)


def test_result_to_dict(prediction_store):
    prediction_store.log_many([0.95] * 10)
    data = run(prediction_store.root).to_dict()
    assert data["retrain"] is False and data["mode"] == "confidence" and data["baseline"] is None
    json.dumps(data)


def check_store(store, tmp_path: Path, **overrides) -> MonitorResult:
    """The stage entry point over a store, as monitor_op calls it."""
    arguments = dict(recent_window=10, yield_threshold=0.7, use_yield_threshold=True, yield_drop_tolerance=0.05,
                     yield_floor=0.6, confidence=0.9, window_out=tmp_path / "out" / "window.jsonl",
                     decision_out=tmp_path / "out" / "decision.json")
    return check_store_yield(store.root, **{**arguments, **overrides})


def test_store_check_writes_the_window_and_the_decision(prediction_store, tmp_path, capsys):
    prediction_store.log_many([0.2] * 3)
    records = prediction_store.log_many([0.95] * 6 + [0.5] * 4)
    result = check_store(prediction_store, tmp_path)
    assert (result.retrain, result.yield_value, result.threshold_used) == (True, 0.6, 0.7)
    assert json.loads((tmp_path / "out" / "decision.json").read_text()) == result.to_dict()
    window = [json.loads(line) for line in (tmp_path / "out" / "window.jsonl").read_text().splitlines()]
    assert [record["request_id"] for record in window] == [record["request_id"] for record in records]
    assert capsys.readouterr().out == result.reason + "\n"


def test_store_check_without_the_threshold_applies_the_baseline_rule(prediction_store, tmp_path):
    prediction_store.log_many([0.95] * 9 + [0.1])  # baseline 0.9
    prediction_store.log_many([0.95] * 8 + [0.1] * 2)  # recent 0.8 < 0.85
    result = check_store(prediction_store, tmp_path, yield_threshold=0.1, use_yield_threshold=False)
    assert (result.retrain, result.baseline) == (True, 0.9)
    assert result.threshold_used == pytest.approx(0.85)  # the threshold 0.1 was ignored


def test_store_check_uses_the_stores_feedback_when_there_is_some(prediction_store, tmp_path):
    records = prediction_store.log_many([0.99] * 10, label=1)
    assert check_store(prediction_store, tmp_path).mode == "confidence"  # no feedback.jsonl: no ground truth
    truth = [1] * 6 + [0] * 4
    (prediction_store.root / "feedback.jsonl").write_text(
        "".join(json.dumps({"request_id": r["request_id"], "label": t}) + "\n" for r, t in zip(records, truth)))
    result = check_store(prediction_store, tmp_path)
    assert (result.mode, result.yield_value, result.retrain) == ("accuracy", 0.6, True)
    window = [json.loads(line) for line in (tmp_path / "out" / "window.jsonl").read_text().splitlines()]
    assert [record["feedback_label"] for record in window] == truth


def test_store_check_of_an_empty_store_names_the_log(tmp_path):
    with pytest.raises(PredictionLogError, match="no complete prediction in the store"):
        check_store_yield(tmp_path / "store", 10, 0.7, True, 0.05, 0.6, 0.9, tmp_path / "w.jsonl", tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()


def test_metrics_carry_the_baseline_only_when_there_is_one(prediction_store):
    prediction_store.log_many([0.95] * 9 + [0.1])
    fixed = run(prediction_store.root)
    assert fixed.metrics() == {"yield_value": 0.9, "window_size": 10.0}
    baseline = run(prediction_store.root, yield_threshold=None)
    assert baseline.metrics() == {"yield_value": 0.9, "window_size": 10.0, "baseline": 0.9}
    assert all(type(value) is float for value in baseline.metrics().values())


def test_the_atc_threshold_in_the_records_gives_an_estimated_accuracy(prediction_store):
    """Records carry their model's ATC threshold (0.6 here): 7 of 10 above it estimate 0.7, while
    the confidence yield (>= 0.9) is 0.5."""
    prediction_store.log_many([0.95] * 5 + [0.65] * 2 + [0.3] * 3, atc_threshold=0.6)
    result = run(prediction_store.root)
    assert result.estimated_accuracy == pytest.approx(0.7)
    assert result.metrics()["estimated_accuracy"] == pytest.approx(0.7)
    assert "; estimated accuracy (ATC) 0.700." in result.reason


def test_no_estimate_from_records_without_a_threshold(prediction_store):
    prediction_store.log_many([0.95] * 5, atc_threshold=0.6)
    prediction_store.log_many([0.95] * 10)  # a model saved before cards had one
    result = run(prediction_store.root)
    assert result.estimated_accuracy is None and "estimated" not in result.reason
    assert "estimated_accuracy" not in result.metrics()


def test_the_estimated_accuracy_mode_compares_the_estimate(prediction_store):
    """Confidence yield 0.8 would not retrain at 0.7; the ATC estimate 0.6 does."""
    prediction_store.log_many([0.95] * 6 + [0.92] * 2 + [0.3] * 2, atc_threshold=0.93)
    result = run(prediction_store.root, yield_mode="estimated_accuracy")
    assert (result.mode, result.retrain) == ("estimated_accuracy", True)
    assert result.yield_value == pytest.approx(0.6) == result.estimated_accuracy
    assert result.reason == ("yield 0.600 as accuracy estimated by ATC over the last 10 predictions of model "
                             "version 1 is below the threshold 0.700: retrain.")
    assert run(prediction_store.root).retrain is False  # the confidence yield: 0.8


def test_the_estimated_accuracy_mode_without_thresholds_uses_yield_and_says_so(prediction_store):
    prediction_store.log_many([0.95] * 10)
    result = run(prediction_store.root, yield_mode="estimated_accuracy")
    assert result.mode == "confidence" and result.yield_value == 1.0
    assert "yield_mode estimated_accuracy, but the records carry no ATC threshold: confidence yield used" in result.reason
    with pytest.raises(ValueError, match="yield_mode must be one of confidence, pass_rate, estimated_accuracy, "
                                         "accuracy, got 'vibes'"):
        run(prediction_store.root, yield_mode="vibes")


def test_pass_rate_yield_is_the_share_classified_ok(prediction_store):
    """The plant's yield: the share of parts the champion calls good, whatever its confidence."""
    prediction_store.log_many([0.99] * 4, label=1)  # baseline: 6 of 10 ok
    prediction_store.log_many([0.6] * 6, label=0)
    prediction_store.log_many([0.99] * 7, label=1)  # now: 3 of 10 ok, every one confident
    prediction_store.log_many([0.6] * 3, label=0)
    result = run(prediction_store.root, yield_mode="pass_rate", ok_class="0", yield_threshold=None)
    assert (result.mode, result.yield_value, result.baseline, result.retrain) == ("pass_rate", 0.3, 0.6, True)
    assert "pass rate (share classified '0') over the last 10 predictions" in result.reason
    assert run(prediction_store.root).retrain is False  # the confidence yield: 0.7, not below 0.7


def test_pass_rate_needs_the_ok_class_and_accuracy_needs_feedback(prediction_store):
    prediction_store.log_many([0.95] * 10)
    with pytest.raises(ValueError, match="yield_mode pass_rate needs ok_class"):
        run(prediction_store.root, yield_mode="pass_rate")
    result = run(prediction_store.root, yield_mode="accuracy")
    assert result.mode == "confidence"
    assert "yield_mode accuracy, but feedback does not cover the window yet: confidence yield used" in result.reason


def test_audited_parts_hold_the_estimate_against_the_truth(prediction_store, tmp_path):
    """Audit labels on 4 of the 10 (3 right): reported beside the ATC estimate, so a user sees
    how far to trust the estimate; the yield stays the confidence share (feedback is partial)."""
    records = prediction_store.log_many([0.99] * 8 + [0.5] * 2, label=1, atc_threshold=0.6)
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"request_id": r["request_id"], "label": t}) + "\n"
                                for r, t in zip(records[:4], [1, 1, 1, 0])))
    result = run(prediction_store.root, feedback_log=feedback)
    assert (result.mode, result.estimated_accuracy, result.audited, result.audited_accuracy) == (
        "confidence", 0.8, 4, 0.75)
    assert result.reason.endswith("; estimated accuracy (ATC) 0.800; accuracy on the 4 audited parts 0.750.")
    assert result.metrics()["audited_accuracy"] == 0.75 and result.metrics()["audited"] == 4.0


def test_a_drift_on_one_camera_retrains_on_that_camera(prediction_store, tmp_path):
    """Overall 0.75 (not below 0.7), but camera-2's 0.5 is: the window handed to collect is its own."""
    for camera, confident in (("camera-1", 40), ("camera-2", 20)):
        prediction_store.log_many([0.95] * confident + [0.3] * (40 - confident), slice_name=camera)
    out = tmp_path / "window.jsonl"
    result = run(prediction_store.root, recent_window=80, window_out=out)
    assert (result.yield_value, result.retrain, result.window_size) == (0.75, True, 40)
    assert result.slices == {
        "camera-1": {"count": 40, "yield_value": 1.0, "threshold": 0.7, "retrain": False},
        "camera-2": {"count": 40, "yield_value": 0.5, "threshold": 0.7, "retrain": True}}
    assert "but slice(s) camera-2 are below theirs: retrain on their 40 predictions" in result.reason
    assert result.reason.endswith("; slices: camera-1 1.000 (n=40), camera-2 0.500 < 0.700 (n=40).")
    assert {json.loads(line)["slice"] for line in out.read_text().splitlines()} == {"camera-2"}
    assert result.metrics()["slice_camera-2_yield"] == 0.5


def test_slices_too_small_to_judge_and_unnamed_windows_are_not_split(prediction_store):
    prediction_store.log_many([0.95] * 10, slice_name="camera-1")  # 10 < 30: reported nowhere, judged overall
    prediction_store.log_many([0.95] * 40)
    result = run(prediction_store.root, recent_window=50)
    assert result.slices == {"(none)": {"count": 40, "yield_value": 1.0, "threshold": 0.7, "retrain": False}}
    assert run(prediction_store.root, recent_window=40).slices == {}  # no named slice in the window


def test_each_slice_gets_its_own_atc_estimate(prediction_store):
    """With the ATC threshold in the records, every judged slice reports its own estimated
    accuracy beside its yield (and in the metrics, for Prometheus); without it, none."""
    for camera, sure in (("camera-1", 36), ("camera-2", 12)):
        prediction_store.log_many([0.95] * sure + [0.5] * (40 - sure), slice_name=camera, atc_threshold=0.6)
    result = run(prediction_store.root, recent_window=80)
    assert {name: figures["estimated_accuracy"] for name, figures in result.slices.items()} == {
        "camera-1": 0.9, "camera-2": 0.3}
    assert result.metrics()["slice_camera-2_estimated_accuracy"] == 0.3 and result.metrics()["slice_camera-2_yield"] == 0.3
