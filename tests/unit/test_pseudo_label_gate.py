"""Pseudo-label quality as a deploy gate (issue 13, item 6): consensus counts the audited
pseudo-labels and their precision, and analyze refuses a challenger whose pseudo-labels feedback
found too often wrong. The pipeline's wiring of both is checked in test_analyze.py's compile
test, the config's defaults and bad values in test_images_config.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.analyze.logic import HoldoutEvidence, ModelScores, PseudoLabelGate, decide, mcnemar_p_value
from components.consensus.logic import consensus_filter
from components.notify.logic import not_deployed
from ctloop.collected import UNLABELLED, CollectedSet

FAIL = ("Fail: pseudo-label precision 0.620 on 50 audited parts is below min_pseudo_label_precision 0.900: the "
        "challenger was trained and judged on labels too often wrong; not deploying.")


def _scores(accuracy: float) -> ModelScores:
    return ModelScores(1000, accuracy, accuracy, [accuracy], [[1000]])


# A challenger that clears every other bar: +0.10 on 1000 holdout samples, McNemar p ~ 1e-30, no golden loss.
BETTER = {"champion": {"holdout": _scores(0.80), "golden": _scores(0.95)},
          "challenger": {"holdout": _scores(0.90), "golden": _scores(0.95)}}
STRONG = HoldoutEvidence([100] * 10, 100, 0, mcnemar_p_value(100, 0))


def _decide(gate: PseudoLabelGate | None) -> tuple[bool, list[str]]:
    return decide(BETTER, STRONG, min_improvement=0.01, max_golden_regression=0.02, min_holdout_per_class=2,
                  evidence_level=0.05, pseudo_labels=gate)


def test_a_low_precision_on_enough_audited_parts_blocks_the_deploy_and_says_why() -> None:
    deploy, reasons = _decide(PseudoLabelGate(0.62, 50, min_precision=0.9, min_audited=20))
    assert not deploy
    assert all(reason.startswith("Pass:") for reason in reasons[:4])
    assert reasons[4] == FAIL
    message = not_deployed(reasons)  # what the notify stage sends to Slack
    assert FAIL in message["text"] and "min_pseudo_label_precision 0.900" in str(message["blocks"])


@pytest.mark.parametrize(("precision", "audited"), [(0.95, 50), (0.9, 20), (1.0, 400)])
def test_a_precision_at_or_above_the_bar_passes(precision: float, audited: int) -> None:
    deploy, reasons = _decide(PseudoLabelGate(precision, audited, min_precision=0.9, min_audited=20))
    assert deploy
    assert reasons[4] == (f"Pass: pseudo-label precision {precision:.3f} on {audited} audited parts is at least "
                          "min_pseudo_label_precision 0.900.")


def test_too_few_audited_parts_report_the_precision_without_gating() -> None:
    deploy, reasons = _decide(PseudoLabelGate(0.5, 19, min_precision=0.9, min_audited=20))
    assert deploy
    assert reasons[4] == ("Not gated: pseudo-label precision 0.500 on 19 audited parts, fewer than "
                          "min_audited_parts 20 to judge the pseudo-labels by; reported only.")
    # One more audited part and the same precision blocks.
    assert not _decide(PseudoLabelGate(0.5, 20, min_precision=0.9, min_audited=20))[0]


def test_no_audited_parts_do_not_gate_and_add_no_reason() -> None:
    ungated = _decide(None)
    assert ungated[0] and len(ungated[1]) == 4
    # Consensus passes precision 0.0 when no kept part was audited: that is no figure, not a bad one.
    assert _decide(PseudoLabelGate(0.0, 0, min_precision=0.9, min_audited=1)) == ungated


def test_the_gate_adds_to_the_other_criteria_and_never_rescues_a_failing_one() -> None:
    worse = {**BETTER, "challenger": {"holdout": _scores(0.70), "golden": _scores(0.95)}}
    deploy, reasons = decide(worse, STRONG, 0.01, 0.02, 2, 0.05, PseudoLabelGate(1.0, 50, 0.9, 20))
    assert not deploy and reasons[0].startswith("Fail:") and reasons[4].startswith("Pass:")


@pytest.mark.parametrize(("audited", "min_precision", "min_audited", "message"), [
    (-1, 0.9, 20, "audited pseudo-labels must be at least 0, got -1"),
    (5, 1.5, 20, r"min_pseudo_label_precision must be in \[0, 1\], got 1.5"),
    (5, 0.9, 0, "min_audited_parts must be at least 1, got 0"),
])
def test_the_gate_refuses_bad_parameters(audited: int, min_precision: float, min_audited: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PseudoLabelGate(0.9, audited, min_precision, min_audited)


class _Branches:
    """B1 and B2 as TorchServe would answer: fixed labels and confidences per model."""

    def __init__(self, answers: dict[str, tuple[list[int], list[float]]]) -> None:
        self.answers = answers

    def predict_batch(self, model_name: str, images: np.ndarray) -> dict[str, list]:
        labels, confidences = self.answers[model_name]
        return {"labels": labels[:len(images)], "confidences": confidences[:len(images)]}


def test_consensus_counts_only_the_kept_audited_parts(tmp_path: Path) -> None:
    # Ten new parts, seven audited: two of those are dropped (B1 and B2 disagree on part 5, B2 is
    # unsure of part 6), and consensus labelled two of the remaining five right.
    truth = np.array([0, 1, 0, 1, 0, 1, 0, UNLABELLED, UNLABELLED, UNLABELLED])
    b1 = [0, 1, 1, 0, 1, 1, 0, 0, 1, 0]
    b2 = [0, 1, 1, 0, 1, 0, 0, 0, 1, 0]
    confident = [0.9] * 10
    low = [0.9] * 6 + [0.1] + [0.9] * 3
    collected = CollectedSet(np.zeros((10, 4, 4), np.float32), truth.astype(np.int64), np.ones(10, bool),
                             np.array([f"r{i}" for i in range(10)]), np.zeros(10, np.int64), ("a", "b"))
    collected.save(tmp_path / "collected.npz")
    branches = _Branches({"b1": (b1, confident), "b2": (b2, low)})
    report = consensus_filter(tmp_path / "collected.npz", branches, 0.5, 0.2, 16, 0,
                              tmp_path / "train.npz", tmp_path / "holdout.npz", tmp_path / "report.md")
    assert report.kept == 8 and report.audited_pseudo_labels == 5
    assert report.pseudo_label_precision == pytest.approx(2 / 5)
    assert (report.metrics()["audited_pseudo_labels"], report.precision_or_zero) == (5.0, pytest.approx(0.4))
    assert "Pseudo-label precision against known labels: 0.400 on 5 audited parts." in (
        tmp_path / "report.md").read_text()


def test_without_audited_parts_consensus_hands_analyze_zero_parts(tmp_path: Path) -> None:
    collected = CollectedSet(np.zeros((4, 4, 4), np.float32), np.full(4, UNLABELLED, np.int64), np.ones(4, bool),
                             np.array(["r0", "r1", "r2", "r3"]), np.zeros(4, np.int64), ("a", "b"))
    collected.save(tmp_path / "collected.npz")
    both = ([0, 1, 0, 1], [0.9] * 4)
    report = consensus_filter(tmp_path / "collected.npz", _Branches({"b1": both, "b2": both}), 0.5, 0.2, 16, 0,
                              tmp_path / "train.npz", tmp_path / "holdout.npz", tmp_path / "report.md")
    assert (report.pseudo_label_precision, report.audited_pseudo_labels, report.precision_or_zero) == (None, 0, 0.0)
    assert "audited_pseudo_labels" not in report.metrics()
