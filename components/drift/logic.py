"""drift: have the champion's inputs changed since it started serving? Then the run's decision.

The monitor (no torch) judges the yield. This stage embeds two windows of stored inputs with the
champion's penultimate layer (ctloop.modelfile.embed): the version's first full window (its
reference: what the champion met when it started serving) and its newest window, and runs the
MMD two-sample test (ctloop.mmd) on them, overall and per slice. A camera change that leaves the
champion confidently wrong moves its embeddings before any label arrives.

Then `trigger` decides: the yield, drift, or both (either signal retrains); the decision names
the signals that tripped, for Slack, and a slice whose inputs drifted retrains on its own
predictions, as the monitor does for a slice whose yield fell.

Why the first window and not the training set or the golden set: a champion retrained on drifted
production is trained for it; held against older inputs, the same drift would trip every run.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ctloop import registry
from ctloop.config import MIN_SLICE_RECORDS, TRIGGERS
from ctloop.images import write_atomic
from ctloop.mmd import mmd_test
from ctloop.modelfile import embed, load_model
from ctloop.wire import record_slice
from serving.store import load_samples, read_newest, read_oldest

__all__ = ["DriftResult", "check_drift", "check_drift_from_registry", "decide", "decision_metrics", "measure_drift"]


@dataclass(frozen=True)
class DriftResult:
    """The drift test's outcome.

    Attributes:
        measured: whether the test ran (a full window and a reference of at least
            MIN_SLICE_RECORDS predictions outside it).
        drifted: the window, or a slice of it, drifted.
        distance: MMD² between the reference's and the window's embeddings (None: not measured).
        p_value: its permutation p-value (None: not measured).
        level: the p-value at or below which a test trips, per test: the configured level
            divided among the tests run (overall plus each slice), so one check raises a false
            alarm at most at the configured rate.
        window_size: predictions in the window.
        reference_size: predictions of the reference (the first window, less any the window holds).
        slices: per named slice with MIN_SLICE_RECORDS predictions in both: count, distance,
            p_value, drifted.
        reason: one sentence with the numbers.
    """

    measured: bool
    drifted: bool
    distance: float | None
    p_value: float | None
    level: float
    window_size: int
    reference_size: int
    reason: str
    slices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def drifted_slices(self) -> list[str]:
        return [name for name, figures in self.slices.items() if figures["drifted"]]


def measure_drift(store_dir: Path, recent_window: int, version: str, load_champion: Callable[[], Any],
                  level: float, permutations: int, seed: int = 0) -> DriftResult:
    """Test the newest `recent_window` inputs of `version` against its first ones, on the
    embeddings of `load_champion()` (that version's model, as ctloop.modelfile.load_model gives
    it; called only when there is something to measure)."""
    window = read_newest(store_dir, recent_window, version).records
    first = read_oldest(store_dir, recent_window, version).records
    in_window = {_key(record) for record in window}
    reference = [record for record in first if _key(record) not in in_window]
    not_yet = _not_measurable(window, reference, recent_window, version)
    if not_yet:
        return DriftResult(False, False, None, None, level, len(window), len(reference), not_yet)
    features = embed(load_champion(), load_samples(store_dir, [record["sample"] for record in reference + window]))
    groups = {name: ([i for i, r in enumerate(reference) if record_slice(r) == name],
                     [len(reference) + i for i, r in enumerate(window) if record_slice(r) == name])
              for name in sorted({record_slice(record) for record in window} - {""})}
    groups = {name: sides for name, sides in groups.items() if min(map(len, sides)) >= MIN_SLICE_RECORDS}
    per_test = level / (1 + len(groups))
    overall = mmd_test(features[:len(reference)], features[len(reference):], permutations, seed)
    slices = {}
    for name, (ref_rows, window_rows) in groups.items():
        test = mmd_test(features[ref_rows], features[window_rows], permutations, seed)
        slices[name] = {"count": len(window_rows), "distance": test.distance, "p_value": test.p_value,
                        "drifted": test.drifted(per_test)}
    drifted = overall.drifted(per_test) or any(figures["drifted"] for figures in slices.values())
    verdict = "drift" if overall.drifted(per_test) else "no drift"
    reason = (f"input drift test (MMD on the champion's embeddings) of the newest {len(window)} predictions of "
              f"version {version} against {len(reference)} of its first: distance {overall.distance:.4f}, "
              f"p-value {overall.p_value:.4f} {'<=' if overall.drifted(per_test) else '>'} {per_test:.4g}: {verdict}")
    reason += _slices_note(slices, per_test)
    return DriftResult(True, drifted, overall.distance, overall.p_value, per_test, len(window), len(reference),
                       reason, slices)


def _not_measurable(window: list[dict[str, Any]], reference: list[dict[str, Any]], recent_window: int,
                    version: str) -> str:
    """Why the test cannot run yet ("" when it can)."""
    if len(window) < recent_window:
        return f"only {len(window)} of {recent_window} predictions by version {version}: drift not measured yet"
    if len(reference) < MIN_SLICE_RECORDS:
        return (f"version {version}'s first window is still almost all in its newest ({len(reference)} predictions "
                f"apart, at least {MIN_SLICE_RECORDS} needed): drift not measured yet")
    return ""


def _slices_note(slices: dict[str, dict[str, Any]], level: float) -> str:
    if not slices:
        return ""
    shown = [f"{name} p={figures['p_value']:.4f}" + (" drifted" if figures["drifted"] else "") for name, figures in
             slices.items()]
    return f"; slices (each at {level:.4g}): " + ", ".join(shown)


def decide(monitor: dict[str, Any], drift: DriftResult, trigger: str) -> dict[str, Any]:
    """The run's decision: the monitor's figures plus the drift test's, the signals that tripped
    (`tripped`), those that retrain under `trigger` (`signals`), and `retrain`."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    tripped = [name for name, fired in (("yield", monitor["retrain"]), ("drift", drift.drifted)) if fired]
    signals = [name for name in tripped if trigger in (name, "both")]
    if signals:
        verdict = f"retrain on {' and '.join(signals)}"
    elif tripped:
        verdict = f"{tripped[0]} tripped, but the trigger is {trigger}: no retrain"
    else:
        verdict = "no retrain"
    reason = f"{monitor['reason'].rstrip('.')}; {drift.reason}. Trigger {trigger}: {verdict}."
    return {**monitor, "retrain": bool(signals), "tripped": tripped, "signals": signals, "trigger": trigger,
            "drift": dataclasses.asdict(drift), "reason": reason}


def decision_metrics(decision: dict[str, Any]) -> dict[str, float]:
    """The decision's drift figures as scalar metrics (none while drift was not measured)."""
    drift = decision["drift"]
    if not drift["measured"]:
        return {}
    figures = {"drift_distance": drift["distance"], "drift_p_value": drift["p_value"],
               "drifted": float(drift["drifted"])}
    for name, slice_figures in drift["slices"].items():
        figures[f"slice_{name}_drift_p_value"] = slice_figures["p_value"]
    return figures


def check_drift(store_dir: Path, recent_window: int, load_champion: Callable[[str], Any], trigger: str,
                level: float, permutations: int, monitor_decision: Path, monitor_window: Path, decision_out: Path,
                window_out: Path) -> dict[str, Any]:
    """The stage on files: measure drift for the version the monitor judged
    (`load_champion(version)` gives its model), write the run's decision and the window to
    retrain on, and return the decision."""
    monitor = json.loads(Path(monitor_decision).read_text(encoding="utf-8"))
    version = str(monitor["model_version"])
    drift = measure_drift(Path(store_dir), recent_window, version, lambda: load_champion(version), level, permutations)
    decision = decide(monitor, drift, trigger)
    write_atomic(Path(decision_out), json.dumps(decision).encode("utf-8"))
    write_atomic(Path(window_out), _retrain_window(Path(monitor_window), decision, drift))
    print(decision["reason"])
    return decision


def _retrain_window(monitor_window: Path, decision: dict[str, Any], drift: DriftResult) -> bytes:
    """The monitor's window, narrowed to the drifted slices when drift alone retrains and the test
    found the slices it came from (one camera of several), as the monitor narrows it to the
    slices whose yield fell."""
    text = monitor_window.read_bytes()
    wanted = set(drift.drifted_slices())
    if decision["signals"] != ["drift"] or not wanted:
        return text
    lines = [line for line in text.decode("utf-8").splitlines(keepends=True)
             if line.strip() and record_slice(json.loads(line)) in wanted]
    return "".join(lines).encode("utf-8")


def check_drift_from_registry(store_dir: Path, recent_window: int, trigger: str, level: float, permutations: int,
                              monitor_decision: Path, monitor_window: Path, decision_out: Path, window_out: Path,
                              tracking_uri: str | None, registered_model: str) -> dict[str, Any]:
    """check_drift with the monitored version's model file from MLflow (checked against its
    sha256), downloaded only when there is something to measure."""
    with tempfile.TemporaryDirectory(prefix="ctloop-drift-") as scratch:
        def load_champion(version: str) -> Any:
            files = registry.download_version(registered_model, version, scratch, tracking_uri or None)
            return load_model(files.model_file)[0]

        return check_drift(store_dir, recent_window, load_champion, trigger, level, permutations, monitor_decision,
                           monitor_window, decision_out, window_out)


def _key(record: dict[str, Any]) -> tuple[str, int]:
    return record["server_id"], record.get("item", 0)
