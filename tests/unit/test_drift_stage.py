"""drift stage: the input-drift test on a store, the trigger's decision, and the window it retrains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.drift.logic import DriftResult, check_drift, decide, decision_metrics, measure_drift
from ctloop.drift import apply_drift
from ctloop.models import build_model
from ctloop.simulator import digits_split
from store_support import StoreWriter

WINDOW = 100


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Production digits in random order (the pool is ordered by class in runs)."""
    images = digits_split(seed=0).production.images
    return images[np.random.default_rng(0).permutation(len(images))]


@pytest.fixture(scope="module")
def champion() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("champion", 10, (8, 8)).eval()


def serve(store: StoreWriter, images: np.ndarray, slice_name: str = "") -> None:
    for image in images:
        store.log(0.95, image=image, slice_name=slice_name)


def serve_two_cameras(store: StoreWriter, digits: np.ndarray, kind: str) -> None:
    """Two windows from cameras 1 and 2, half each; camera 2's second half drifted by `kind`."""
    half = WINDOW // 2
    serve(store, digits[:half], "camera-1")
    serve(store, digits[half:WINDOW], "camera-2")
    serve(store, digits[WINDOW:WINDOW + half], "camera-1")
    serve(store, apply_drift(digits[WINDOW + half:2 * WINDOW], kind, 1.0, np.random.default_rng(1)), "camera-2")


def never_loaded():
    raise AssertionError("the champion was loaded with nothing to measure")


def test_nothing_is_measured_or_loaded_before_a_full_window(prediction_store, digits) -> None:
    serve(prediction_store, digits[:WINDOW - 1])
    result = measure_drift(prediction_store.root, WINDOW, "1", never_loaded, 0.01, 200)
    assert not result.measured and not result.drifted
    assert result.reason == f"only {WINDOW - 1} of {WINDOW} predictions by version 1: drift not measured yet"


def test_the_first_window_must_lie_mostly_outside_the_newest(prediction_store, digits) -> None:
    """Until the version served a window more (at least 30 predictions), reference and window are one sample."""
    serve(prediction_store, digits[:WINDOW + 29])
    result = measure_drift(prediction_store.root, WINDOW, "1", never_loaded, 0.01, 200)
    assert not result.measured and result.reference_size == 29
    assert "29 predictions apart, at least 30 needed" in result.reason


def test_clean_production_does_not_drift(prediction_store, digits, champion) -> None:
    serve(prediction_store, digits[:2 * WINDOW])
    result = measure_drift(prediction_store.root, WINDOW, "1", lambda: champion, 0.01, 200)
    assert result.measured and not result.drifted
    assert (result.window_size, result.reference_size, result.level) == (WINDOW, WINDOW, 0.01)
    assert result.p_value > 0.01 and ": no drift" in result.reason


@pytest.mark.parametrize("kind", ["lighting", "blur", "shift"])
def test_drift_is_detected(prediction_store, digits, champion, kind: str) -> None:
    """An untrained network's features already move under these; sensor noise needs the trained
    champion's (tests/integration/test_drift_on_champion.py)."""
    serve(prediction_store, digits[:WINDOW])
    serve(prediction_store, apply_drift(digits[WINDOW:2 * WINDOW], kind, 1.0, np.random.default_rng(1)))
    result = measure_drift(prediction_store.root, WINDOW, "1", lambda: champion, 0.01, 200)
    assert result.drifted and result.p_value <= 0.01
    assert f"newest {WINDOW} predictions of version 1 against {WINDOW} of its first" in result.reason


def test_a_drifted_slice_is_found_and_the_level_is_shared(prediction_store, digits, champion) -> None:
    """One camera of two drifts; both slices and the whole are tested, each at a third of the level."""
    serve_two_cameras(prediction_store, digits, "blur")
    result = measure_drift(prediction_store.root, WINDOW, "1", lambda: champion, 0.03, 200)
    assert result.level == pytest.approx(0.01)
    assert result.drifted_slices() == ["camera-2"]
    assert result.slices["camera-1"]["p_value"] > 0.01 and result.slices["camera-2"]["count"] == WINDOW // 2
    assert "slices (each at 0.01): camera-1 p=" in result.reason


def measured(drifted: bool, slices: dict | None = None, p_value: float = 0.5) -> DriftResult:
    return DriftResult(True, drifted, 0.02, 0.001 if drifted and not slices else p_value, 0.01, 300, 300,
                       "input drift test ...", slices or {})


MONITOR = {"retrain": False, "yield_value": 0.9, "threshold_used": 0.7, "window_size": 300, "model_version": "1",
           "mode": "confidence", "baseline": None, "reason": "yield 0.900 is not below the threshold 0.700: no retrain."}


@pytest.mark.parametrize(("trigger", "yield_tripped", "drifted", "signals"), [
    ("both", True, True, ["yield", "drift"]),
    ("both", False, True, ["drift"]),
    ("yield", False, True, []),
    ("drift", True, False, []),
    ("drift", False, True, ["drift"]),
    ("yield", True, True, ["yield"]),
])
def test_the_trigger_picks_the_signals_that_retrain(trigger, yield_tripped, drifted, signals) -> None:
    decision = decide({**MONITOR, "retrain": yield_tripped}, measured(drifted), trigger)
    assert decision["signals"] == signals and decision["retrain"] == bool(signals)
    assert decision["tripped"] == [name for name, on in (("yield", yield_tripped), ("drift", drifted)) if on]
    assert decision["reason"].startswith("yield 0.900 is not below the threshold 0.700: no retrain; input drift test")
    if decision["tripped"] and not signals:
        assert decision["reason"].endswith(f"Trigger {trigger}: {decision['tripped'][0]} tripped, but the trigger is "
                                           f"{trigger}: no retrain.")


def test_decide_rejects_an_unknown_trigger() -> None:
    with pytest.raises(ValueError, match="trigger must be one of yield, drift, both, got 'either'"):
        decide(MONITOR, measured(False), "either")


def test_only_the_drifted_slice_is_retrained_on(tmp_path: Path, prediction_store, digits, champion) -> None:
    """check_drift on files: the decision carries the drift figures, and the window collect gets
    holds the drifted camera's predictions only, as the monitor narrows it for a slice's yield
    (the whole window drifted too here, through that camera)."""
    serve_two_cameras(prediction_store, digits, "shift")
    monitor_window = tmp_path / "window.jsonl"
    records = [json.loads(line) for line in prediction_store.segment_log("1").read_text().splitlines()][WINDOW:]
    monitor_window.write_text("".join(json.dumps(record) + "\n" for record in records))
    monitor_decision = tmp_path / "monitor.json"
    monitor_decision.write_text(json.dumps(MONITOR))
    loaded = []
    decision = check_drift(prediction_store.root, WINDOW, lambda version: loaded.append(version) or champion, "both",
                           0.03, 200, monitor_decision, monitor_window, tmp_path / "decision.json",
                           tmp_path / "retrain.jsonl")
    assert loaded == ["1"] and decision["signals"] == ["drift"]
    assert json.loads((tmp_path / "decision.json").read_text()) == decision
    kept = [json.loads(line) for line in (tmp_path / "retrain.jsonl").read_text().splitlines()]
    assert len(kept) == WINDOW // 2 and {record["slice"] for record in kept} == {"camera-2"}
    assert set(decision_metrics(decision)) == {"drift_distance", "drift_p_value", "drifted",
                                               "slice_camera-1_drift_p_value", "slice_camera-2_drift_p_value"}


def test_a_window_that_drifts_as_a_whole_is_passed_on_whole(tmp_path: Path, prediction_store, digits, champion) -> None:
    serve(prediction_store, digits[:WINDOW])
    serve(prediction_store, apply_drift(digits[WINDOW:2 * WINDOW], "lighting", 1.0, np.random.default_rng(1)))
    monitor_window, monitor_decision = tmp_path / "window.jsonl", tmp_path / "monitor.json"
    monitor_window.write_text("".join(prediction_store.segment_log("1").read_text().splitlines(keepends=True)[WINDOW:]))
    monitor_decision.write_text(json.dumps(MONITOR))
    decision = check_drift(prediction_store.root, WINDOW, lambda version: champion, "drift", 0.01, 200,
                           monitor_decision, monitor_window, tmp_path / "decision.json", tmp_path / "retrain.jsonl")
    assert decision["retrain"] and decision["drift"]["slices"] == {}
    assert (tmp_path / "retrain.jsonl").read_bytes() == monitor_window.read_bytes()


def test_no_drift_figures_before_drift_is_measured() -> None:
    unmeasured = DriftResult(False, False, None, None, 0.01, 3, 0, "not yet")
    assert decision_metrics(decide(MONITOR, unmeasured, "both")) == {}
