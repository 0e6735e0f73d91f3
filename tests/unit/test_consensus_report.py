"""consensus-filter without a server: the report's metrics (the filter itself runs against a real
TorchServe in tests/integration/test_consensus.py)."""

from __future__ import annotations

import pytest

from components.consensus.logic import ConsensusReport


def report(pseudo_label_precision: float | None, branch_audited_accuracy: float | None = None) -> ConsensusReport:
    return ConsensusReport(window=120, kept=90, kept_share=0.75, per_class={"0": 40, "1": 50},
                           agreement=[[40, 10], [20, 50]], disagreed=30, branch_audited_accuracy=branch_audited_accuracy, unconfident=0, train_size=102,
                           holdout_size=18, previous_size=30, pseudo_label_precision=pseudo_label_precision,
                           audited_pseudo_labels=0 if pseudo_label_precision is None else 25)


def test_metrics_are_the_counts_and_shares_as_floats() -> None:
    metrics = report(None).metrics()
    assert metrics == {"kept": 90.0, "kept_share": 0.75, "train_size": 102.0, "holdout_size": 18.0,
                       "disagreement": 0.25, "estimated_branch_accuracy": 0.75}
    assert all(type(value) is float for value in metrics.values())


@pytest.mark.parametrize("precision", [0.0, 0.97])
def test_metrics_carry_the_precision_when_feedback_gave_labels(precision: float) -> None:
    metrics = report(precision).metrics()
    assert metrics["pseudo_label_precision"] == precision and metrics["audited_pseudo_labels"] == 25.0


def test_metrics_carry_the_branches_audited_accuracy_beside_the_estimate() -> None:
    metrics = report(0.9, branch_audited_accuracy=0.7).metrics()
    assert metrics["branch_audited_accuracy"] == 0.7 and metrics["estimated_branch_accuracy"] == 0.75
