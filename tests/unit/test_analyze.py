"""The analyze stage: real models on digits for the behaviour, fixed scores for the rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kfp import compiler
from scipy.stats import binomtest
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score

from components.analyze.logic import (
    AnalysisResult,
    HoldoutEvidence,
    ModelScores,
    PseudoLabelGate,
    analyze,
    decide,
    holdout_evidence,
    mcnemar_p_value,
    scores_from_labels,
)
from components.notify.logic import not_deployed
from ctloop.config import PipelineConfig
from ctloop.images import ImageSet
from ctloop.modelfile import ModelCard, load_model, predict_proba, save_model
from ctloop.models import build_model
from ctloop.training import RECIPES, train_model, with_epochs
from kubeflow_pipeline.images import ImageSettings
from kubeflow_pipeline.pipeline import build_pipeline

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
    card = ModelCard("champion", CLASSES, (8, 8), "ResidualCNN")
    good, _ = train_model("champion", train, with_epochs(RECIPES["champion"], 8), progress=False)
    save_model(good, card, paths["good"])
    torch.manual_seed(0)
    save_model(build_model("champion", len(CLASSES), (8, 8)), card, paths["bad"])
    return paths


DEFAULTS = PipelineConfig()  # the shipped evidence rule: 2 holdout samples per class, p <= 0.05


def _analyze(paths: dict[str, Path], challenger: str, champion: str, out: Path,
             holdout: Path | None = None, min_holdout_per_class: int = DEFAULTS.min_holdout_per_class,
             evidence_level: float = DEFAULTS.evidence_level) -> AnalysisResult:
    return analyze(
        paths[challenger], paths[champion], holdout or paths["holdout"], paths["golden"],
        min_improvement=0.01, max_golden_regression=0.02, min_holdout_per_class=min_holdout_per_class,
        evidence_level=evidence_level, report_out=out,
    )


def test_a_better_challenger_is_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    # A clearly better challenger on a 200-sample holdout clears every bar with the shipped defaults.
    result = _analyze(digits, "good", "bad", tmp_path / "report.md")
    assert result.deploy
    assert len(result.reasons) == 4
    assert all(reason.startswith("Pass: ") for reason in result.reasons)
    good = result.scores["challenger"]["holdout"].accuracy
    assert good > 0.7
    assert f"{good:.3f}" in result.reasons[0]
    assert "at least the required improvement of 0.010" in result.reasons[0]
    assert result.reasons[1] == ("Pass: the holdout's 200 samples are at least the 20 required "
                                 "(2 per class for 10 classes).")
    evidence = result.evidence
    assert evidence.challenger_only > 100 and evidence.p_value < 1e-20
    assert (f"the challenger alone is right on {evidence.challenger_only} holdout samples and the champion "
            f"alone on {evidence.champion_only}") in result.reasons[2]
    assert "within the evidence level of 0.0500" in result.reasons[2]
    assert "within the allowed regression of 0.020" in result.reasons[3]


def test_a_worse_challenger_is_not_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    result = _analyze(digits, "bad", "good", tmp_path / "report.md")
    assert not result.deploy
    assert result.reasons[0].startswith("Fail: on the new data (holdout, 200 samples)")
    assert "less than the required improvement of 0.010" in result.reasons[0]
    assert result.reasons[2].startswith("Not enough evidence: the challenger alone is right on")
    assert "p = 1.0000, above the evidence level of 0.0500; not deploying." in result.reasons[2]
    assert result.reasons[3].startswith("Fail: on the golden set (300 samples)")
    assert "more than the allowed regression of 0.020" in result.reasons[3]


def test_an_equal_challenger_does_not_clear_the_improvement_bar(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    result = _analyze(digits, "good", "good", tmp_path / "report.md")
    assert not result.deploy
    assert result.reasons[0].startswith("Fail:") and "change of +0.000" in result.reasons[0]
    assert result.reasons[1].startswith("Pass:")
    assert result.reasons[2] == ("Not enough evidence: the challenger alone is right on 0 holdout samples and "
                                 "the champion alone on 0; McNemar's exact test gives p = 1.0000, above the "
                                 "evidence level of 0.0500; not deploying.")
    assert result.reasons[3].startswith("Pass:")


def _tiny_holdout(paths: dict[str, Path], out: Path, size: int = 4) -> Path:
    """`size` holdout samples the good model gets right and the untrained one wrong."""
    holdout = ImageSet.load(paths["holdout"])
    right = {name: predict_proba(load_model(paths[name])[0], holdout.images).argmax(axis=1) == holdout.labels
             for name in ("good", "bad")}
    chosen = np.flatnonzero(right["good"] & ~right["bad"])[:size]
    assert len(chosen) == size
    holdout.subset(chosen).save(out)
    return out


def test_a_tiny_holdout_cannot_decide_a_deploy(digits: dict[str, Path], tmp_path: Path) -> None:
    # Four samples, every one won by the challenger (+ a whole point of accuracy): no deploy.
    tiny = _tiny_holdout(digits, tmp_path / "tiny.npz")
    result = _analyze(digits, "good", "bad", tmp_path / "report.md", holdout=tiny)
    assert not result.deploy
    assert result.reasons[0].startswith("Pass: on the new data (holdout, 4 samples)")
    counts = ", ".join(str(count) for count in result.evidence.class_counts)
    assert sum(result.evidence.class_counts) == 4
    assert result.reasons[1] == (f"Not enough evidence: the holdout has 4 samples (per class: {counts}), fewer "
                                 "than the 20 required (2 per class for 10 classes); not deploying.")
    assert result.reasons[2] == ("Not enough evidence: the challenger alone is right on 4 holdout samples and "
                                 "the champion alone on 0; McNemar's exact test gives p = 0.0625, above the "
                                 "evidence level of 0.0500; not deploying.")
    assert result.reasons[3].startswith("Pass:")
    slack = not_deployed(result.reasons)  # what the notify stage sends
    assert "per class: " in slack["text"] and "McNemar's exact test gives p = 0.0625" in slack["text"]
    # Either criterion alone refuses it: the size without the test, the test without the size.
    assert not _analyze(digits, "good", "bad", tmp_path / "r.md", holdout=tiny, evidence_level=1.0).deploy
    assert not _analyze(digits, "good", "bad", tmp_path / "r.md", holdout=tiny, min_holdout_per_class=1).deploy
    assert not _analyze(digits, "good", "bad", tmp_path / "r.md", holdout=tiny, min_holdout_per_class=1,
                        evidence_level=1.0).deploy  # 4 < 1 x 10 classes
    # With both switched off (bench's TINY settings) the four samples decide, as before the rule.
    assert _analyze(digits, "good", "bad", tmp_path / "r.md", holdout=tiny, min_holdout_per_class=0,
                    evidence_level=1.0).deploy


def test_pseudo_labels_audited_too_often_wrong_block_a_better_challenger(
    digits: dict[str, Path], tmp_path: Path
) -> None:
    # The challenger that test_a_better_challenger_is_deployed deploys, but feedback found 38 of the
    # 50 audited pseudo-labels wrong: the decision, the report and notify's document say so.
    gate = PseudoLabelGate(precision=0.24, audited=50, min_precision=0.9, min_audited=20)
    result = analyze(digits["good"], digits["bad"], digits["holdout"], digits["golden"], min_improvement=0.01,
                     max_golden_regression=0.02, min_holdout_per_class=2, evidence_level=0.05,
                     report_out=tmp_path / "report.md", pseudo_labels=gate)
    assert not result.deploy
    assert [reason.split(":")[0] for reason in result.reasons] == ["Pass"] * 4 + ["Fail"]
    assert result.reasons[4].startswith("Fail: pseudo-label precision 0.240 on 50 audited parts is below "
                                        "min_pseudo_label_precision 0.900")
    assert f"- {result.reasons[4]}" in result.report.read_text()
    assert result.decision("1")["reasons"] == result.reasons
    assert json.loads(json.dumps(result.to_dict()))["pseudo_labels"]["audited"] == 50
    # Fewer audited parts than min_audited_parts: the same precision is reported and the challenger deployed.
    few = PseudoLabelGate(precision=0.24, audited=19, min_precision=0.9, min_audited=20)
    reported = analyze(digits["good"], digits["bad"], digits["holdout"], digits["golden"], 0.01, 0.02, 2, 0.05,
                       tmp_path / "report.md", few)
    assert reported.deploy and reported.reasons[4].startswith("Not gated: pseudo-label precision 0.240 on 19")


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
    evidence = result.evidence
    assert "## Evidence on the new data" in text
    assert (f"| 200 | 20 | {evidence.challenger_only} | {evidence.champion_only} | {evidence.p_value:.4f} | "
            "0.0500 |") in text
    truth = ImageSet.load(digits["holdout"]).labels
    assert evidence.class_counts == np.bincount(truth, minlength=10).tolist()
    assert "| golden challenger | holdout samples |" in text
    assert all(f"- {reason}" in text for reason in result.reasons)
    assert "## Confusion matrix: challenger on the golden (rows: true class)" in text

    metrics = result.metrics()
    assert metrics["challenger_holdout_accuracy"] == result.scores["challenger"]["holdout"].accuracy
    assert metrics["golden_count"] == 300
    assert metrics["mcnemar_p_value"] == evidence.p_value
    assert metrics["holdout_challenger_only_correct"] == evidence.challenger_only > 0
    assert metrics["holdout_champion_only_correct"] == evidence.champion_only
    assert all(isinstance(value, float) for value in metrics.values())
    assert json.loads(json.dumps(result.to_dict()))["deploy"] is True


def test_an_empty_holdout_is_not_deployed(digits: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    ImageSet(np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64), CLASSES).save(empty)
    result = _analyze(digits, "good", "bad", tmp_path / "report.md", holdout=empty)
    assert not result.deploy
    assert result.reasons[0].startswith("Fail: the holdout of new data is empty")
    assert len(result.reasons) == 2 and result.reasons[1].startswith("Pass: on the golden set")
    assert result.evidence == HoldoutEvidence([0] * 10, 0, 0, 1.0)
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


# 1000 holdout samples of 10 classes and a decisive McNemar test (p ~ 1e-30): the evidence passes.
STRONG = HoldoutEvidence([100] * 10, 100, 0, mcnemar_p_value(100, 0))


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
    decision, reasons = decide(scores, STRONG, min_improvement=0.01, max_golden_regression=0.02,
                               min_holdout_per_class=2, evidence_level=0.05)
    assert decision is deploy
    assert len(reasons) == 4 and reasons[1].startswith("Pass:") and reasons[2].startswith("Pass:")
    # reasons: 0 the gain on new data, 1 and 2 its evidence, 3 the golden set
    assert [index for index, reason in enumerate(reasons) if reason.startswith("Fail")] == [
        {0: 0, 1: 3}[criterion] for criterion in failing
    ]


def _paired(challenger_only: int, champion_only: int, both_right: int, classes: int = 10) -> tuple:
    """Scores and evidence of a holdout on which the two models disagree as given."""
    size = challenger_only + champion_only + both_right
    truth = np.arange(size) % classes
    wrong = (truth + 1) % classes
    champion = np.concatenate([wrong[:challenger_only], truth[challenger_only:]])
    challenger = np.concatenate([truth[:challenger_only], wrong[challenger_only:challenger_only + champion_only],
                                 truth[challenger_only + champion_only:]])
    scores = {model: {"holdout": scores_from_labels(truth, predicted, classes), "golden": _scores(0.95)}
              for model, predicted in (("champion", champion), ("challenger", challenger))}
    return scores, holdout_evidence(truth, champion, challenger, classes)


def test_a_small_gain_on_few_discordant_pairs_is_refused_with_the_p_value() -> None:
    # 3 won, 1 lost of 100: +0.02 clears min_improvement, but a fair coin does as well 5 times in 16.
    scores, evidence = _paired(challenger_only=3, champion_only=1, both_right=96)
    assert (evidence.challenger_only, evidence.champion_only, evidence.class_counts) == (3, 1, [10] * 10)
    deploy, reasons = decide(scores, evidence, min_improvement=0.01, max_golden_regression=0.02,
                             min_holdout_per_class=2, evidence_level=0.05)
    assert not deploy
    assert reasons[0].startswith("Pass:") and "change of +0.020" in reasons[0]
    assert reasons[1].startswith("Pass:")
    assert reasons[2] == ("Not enough evidence: the challenger alone is right on 3 holdout samples and the "
                          "champion alone on 1; McNemar's exact test gives p = 0.3125, above the evidence "
                          "level of 0.0500; not deploying.")
    assert reasons[3].startswith("Pass:")
    # The same gain with more discordant pairs behind it is evidence: 13 won, 11 lost is not, 7 won of 7 is.
    assert not decide(*_paired(13, 11, 76), 0.01, 0.02, 2, 0.05)[0]
    assert decide(*_paired(7, 0, 93), 0.01, 0.02, 2, 0.05)[0]


@pytest.mark.parametrize(
    ("challenger_only", "champion_only", "both_right", "level", "deploy"),
    [
        (5, 0, 15, 0.03125, True),  # p = 1/32 exactly at the level: passes
        (5, 0, 15, 0.0312, False),
        (4, 0, 16, 0.0625, True),  # p = 1/16
        (4, 0, 16, 0.05, False),
        (7, 1, 12, 0.03515625, True),  # p = 9/256
        (7, 1, 12, 0.035, False),
        (5, 0, 14, 1.0, False),  # 19 samples < 2 x 10 classes, whatever the test says
        (1, 0, 19, 1.0, True),  # 20 samples: the size is met; evidence_level 1.0 switches the test off
    ],
)
def test_the_evidence_thresholds(challenger_only: int, champion_only: int, both_right: int, level: float,
                                 deploy: bool) -> None:
    scores, evidence = _paired(challenger_only, champion_only, both_right)
    decision, reasons = decide(scores, evidence, min_improvement=0.01, max_golden_regression=0.02,
                               min_holdout_per_class=2, evidence_level=level)
    assert decision is deploy, reasons
    assert reasons[0].startswith("Pass:")
    assert any(reason.startswith("Not enough evidence:") for reason in reasons) is not deploy


@pytest.mark.parametrize(("challenger_only", "champion_only"),
                         [(0, 0), (0, 3), (1, 0), (3, 1), (5, 0), (7, 1), (9, 2), (30, 12), (120, 100), (0, 500)])
def test_mcnemar_p_value_is_scipys_one_sided_exact_binomial_test(challenger_only: int, champion_only: int) -> None:
    pairs = challenger_only + champion_only
    expected = binomtest(challenger_only, pairs, 0.5, alternative="greater").pvalue if pairs else 1.0
    assert mcnemar_p_value(challenger_only, champion_only) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_the_compiled_pipeline_passes_the_evidence_and_pseudo_label_parameters_to_analyze(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    config = PipelineConfig(min_holdout_per_class=3, evidence_level=0.01, min_pseudo_label_precision=0.95,
                            min_audited_parts=30)
    compiler.Compiler().compile(build_pipeline(config, ImageSettings("registry.example/acme", "3f2c1d0")), str(out))
    spec = yaml.safe_load(out.read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    integer, double = "NUMBER_INTEGER", "NUMBER_DOUBLE"
    for name, value, kind in (("min_holdout_per_class", 3, integer), ("evidence_level", 0.01, double),
                              ("min_pseudo_label_precision", 0.95, double), ("min_audited_parts", 30, integer)):
        assert parameters[name] == {"defaultValue": value, "isOptional": True, "parameterType": kind}
    settings = ("min_improvement", "min_holdout_per_class", "evidence_level", "min_pseudo_label_precision",
                "min_audited_parts")
    analyze_inputs = spec["components"]["comp-analyze-op"]["inputDefinitions"]["parameters"]
    assert set(settings) <= set(analyze_inputs)
    task = spec["components"]["comp-condition-2"]["dag"]["tasks"]["analyze-op"]["inputs"]["parameters"]
    for name in settings:
        assert task[name] == {"componentInputParameter": f"pipelinechannel--{name}"}
    # The consensus stage's audited precision and count reach analyze as its outputs.
    consensus_outputs = spec["components"]["comp-consensus-op"]["outputDefinitions"]["parameters"]
    for name, kind in (("pseudo_label_precision", double), ("audited_pseudo_labels", integer)):
        assert consensus_outputs[name] == {"parameterType": kind}
        assert task[name] == {"taskOutputParameter": {"outputParameterKey": name, "producerTask": "consensus-op"}}


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
