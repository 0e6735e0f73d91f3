"""The analyze stage: real models on digits for the behaviour, fixed scores for the rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score

from components.analyze import AnalysisResult, ModelScores, analyze
from components.analyze.logic import decide, scores_from_labels
from ctloop.images import ImageSet
from ctloop.modelfile import ModelCard, save_model
from ctloop.models import build_model
from ctloop.training import RECIPES, train_model, with_epochs

CLASSES = tuple(str(digit) for digit in range(10))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained model ("good"), an untrained one ("bad"), a holdout and a golden set."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    train = ImageSet(images[:600], labels[:600], CLASSES)
    directory = tmp_path_factory.mktemp("analyze")
    paths = {
        "holdout": directory / "holdout.npz",
        "golden": directory / "golden.npz",
        "good": directory / "good.pt",
        "bad": directory / "bad.pt",
    }
    ImageSet(images[600:800], labels[600:800], CLASSES).save(paths["holdout"])
    ImageSet(images[800:1100], labels[800:1100], CLASSES).save(paths["golden"])
    card = ModelCard("champion", CLASSES, (8, 8), "ChampionNet")
    good, _ = train_model("champion", train, with_epochs(RECIPES["champion"], 8), progress=False)
    save_model(good, card, paths["good"])
    torch.manual_seed(0)
    save_model(build_model("champion", len(CLASSES)), card, paths["bad"])
    return paths


def _analyze(paths: dict[str, Path], challenger: str, champion: str, out: Path,
             holdout: Path | None = None) -> AnalysisResult:
    return analyze(
        paths[challenger], paths[champion], holdout or paths["holdout"], paths["golden"],
        min_improvement=0.01, max_golden_regression=0.02, report_out=out,
    )


def test_a_better_challenger_is_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "good", "bad", tmp_path / "report.md")
    assert result.deploy
    assert len(result.reasons) == 2
    assert all(reason.startswith("Pass: ") for reason in result.reasons)
    good = result.scores["challenger"]["holdout"].accuracy
    assert good > 0.7
    assert f"{good:.3f}" in result.reasons[0]
    assert "at least the required improvement of 0.010" in result.reasons[0]
    assert "within the allowed regression of 0.020" in result.reasons[1]


def test_a_worse_challenger_is_not_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "bad", "good", tmp_path / "report.md")
    assert not result.deploy
    assert result.reasons[0].startswith("Fail: on the new data (holdout, 200 samples)")
    assert "less than the required improvement of 0.010" in result.reasons[0]
    assert result.reasons[1].startswith("Fail: on the golden set (300 samples)")
    assert "more than the allowed regression of 0.020" in result.reasons[1]


def test_an_equal_challenger_does_not_clear_the_improvement_bar(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    result = _analyze(digits, "good", "good", tmp_path / "report.md")
    assert not result.deploy
    assert result.reasons[0].startswith("Fail:") and "change of +0.000" in result.reasons[0]
    assert result.reasons[1].startswith("Pass:")


def test_confusion_matrices_count_every_sample(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "good", "bad", tmp_path / "report.md")
    for model in ("champion", "challenger"):
        for data_set, size in (("holdout", 200), ("golden", 300)):
            scores = result.scores[model][data_set]
            matrix = np.array(scores.confusion_matrix)
            assert matrix.shape == (10, 10)
            assert matrix.sum() == scores.count == size
            truth = ImageSet.load(digits[data_set]).labels
            np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(truth, minlength=10))
            assert scores.accuracy == pytest.approx(np.trace(matrix) / size)
    assert isinstance(result.scores["champion"]["golden"].confusion_matrix[0][0], int)


def test_the_report_and_the_flat_metrics(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "good", "bad", tmp_path / "reports" / "analysis.md")
    text = result.report.read_text()
    assert result.report == tmp_path / "reports" / "analysis.md"
    assert "**Decision: deploy the challenger**" in text
    assert "| data set | samples | metric | champion | challenger | change |" in text
    assert "| class | holdout champion | holdout challenger | golden champion |" in text
    assert all(f"- {reason}" in text for reason in result.reasons)
    assert "## Confusion matrix: challenger on the golden (rows: true class)" in text

    metrics = result.metrics()
    assert metrics["challenger_holdout_accuracy"] == result.scores["challenger"]["holdout"].accuracy
    assert metrics["golden_count"] == 300
    assert json.loads(json.dumps(result.to_dict()))["deploy"] is True


def test_an_empty_holdout_is_not_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    ImageSet(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), CLASSES).save(empty)
    result = _analyze(digits, "good", "bad", tmp_path / "report.md", holdout=empty)
    assert not result.deploy
    assert result.reasons[0].startswith("Fail: the holdout of new data is empty")
    assert result.reasons[1].startswith("Pass:")
    assert result.scores["challenger"]["holdout"].count == 0
    assert "(no samples)" in result.report.read_text()


def test_refuses_a_data_set_with_other_classes(digits: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "letters.npz"
    ImageSet(np.zeros((2, 8, 8), np.float32), np.array([0, 1]), ("a", "b")).save(other)
    with pytest.raises(ValueError, match=r"good.pt: the challenger predicts classes \['0'"):
        _analyze(digits, "good", "bad", tmp_path / "report.md", holdout=other)
    assert not (tmp_path / "report.md").exists()


def _scores(accuracy: float, count: int = 1000) -> ModelScores:
    return ModelScores(count, accuracy, accuracy, [accuracy], [[count]])


@pytest.mark.parametrize(
    ("holdout", "golden", "deploy", "failing"),
    [
        ((0.80, 0.90), (0.95, 0.95), True, []),
        ((0.80, 0.81), (0.95, 0.95), True, []),  # exactly min_improvement: passes
        ((0.80, 0.805), (0.95, 0.95), False, [0]),
        ((0.80, 0.90), (0.95, 0.93), True, []),  # exactly max_golden_regression: passes
        ((0.80, 0.90), (0.95, 0.929), False, [1]),
        ((0.80, 0.70), (0.95, 0.90), False, [0, 1]),
        ((0.80, 0.90), (0.90, 0.99), True, []),  # a golden gain is fine
    ],
)
def test_the_decision_rule(
    holdout: tuple[float, float], golden: tuple[float, float], deploy: bool, failing: list[int]
) -> None:
    scores = {
        "champion": {"holdout": _scores(holdout[0]), "golden": _scores(golden[0])},
        "challenger": {"holdout": _scores(holdout[1]), "golden": _scores(golden[1])},
    }
    decision, reasons = decide(scores, min_improvement=0.01, max_golden_regression=0.02)
    assert decision is deploy
    assert [index for index, reason in enumerate(reasons) if reason.startswith("Fail")] == failing


def test_scores_from_labels_agree_with_sklearn() -> None:
    truth = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    predicted = np.array([0, 1, 1, 1, 0, 2, 1, 0])
    scores = scores_from_labels(truth, predicted, classes=4)  # class 3 never occurs
    assert scores.count == 8
    assert scores.accuracy == pytest.approx(5 / 8)
    assert scores.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert scores.per_class_recall == pytest.approx([2 / 3, 2 / 3, 1 / 2, None])
    assert scores.confusion_matrix[0] == [2, 1, 0, 0]


def test_accuracy_deltas_are_challenger_minus_champion(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "good", "bad", tmp_path / "report.md")
    deltas = result.accuracy_deltas()
    assert list(deltas) == ["holdout accuracy", "golden accuracy"]
    for data_set in ("holdout", "golden"):
        gain = result.scores["challenger"][data_set].accuracy - result.scores["champion"][data_set].accuracy
        assert deltas[f"{data_set} accuracy"] == pytest.approx(gain) and gain > 0.5
    reversed_deltas = _analyze(digits, "bad", "good", tmp_path / "report.md").accuracy_deltas()
    assert reversed_deltas == pytest.approx({name: -delta for name, delta in deltas.items()})


def test_confusion_matrices_by_model_and_data_set(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "good", "bad", tmp_path / "report.md")
    matrices = result.confusion_matrices()
    assert set(matrices) == {(model, data_set) for model in ("champion", "challenger")
                             for data_set in ("holdout", "golden")}
    for (model, data_set), matrix in matrices.items():
        assert matrix == result.scores[model][data_set].confusion_matrix
    assert matrices[("challenger", "golden")] != matrices[("champion", "golden")]


def test_the_decision_document_for_notify(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "bad", "good", tmp_path / "report.md")
    decision = result.decision("7")
    assert decision == {"deploy": False, "reasons": result.reasons, "champion_version": "7",
                        "deltas": result.accuracy_deltas()}
    assert json.loads(json.dumps(decision)) == decision
