"""analyze: the challenger against the champion, and whether to deploy it.

Both models predict in-process on two sets: the pseudo-labelled holdout (the new, drifted data)
and the labelled golden set (the original distribution). The challenger is deployed only if it
beats the champion by at least `min_improvement` on the new data, with evidence, and loses at most
`max_golden_regression` on the golden set. Evidence means a holdout of at least
`min_holdout_per_class` samples per class on average (min_holdout_per_class x the number of
classes) and McNemar's exact test on the paired answers: of the holdout samples exactly one model
gets right, the challenger's share must be larger than chance would give, one-sided
p <= `evidence_level`. When feedback labelled at least `min_audited_parts` of the parts the
consensus stage pseudo-labelled, their pseudo-label precision must also reach
`min_pseudo_label_precision` (PseudoLabelGate): the holdout that shows the gain carries those same
labels. Every criterion becomes one sentence in `reasons`.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.images import ImageSet, write_atomic
from ctloop.canary import Canary
from ctloop.modelfile import ModelCard, load_model, predict_proba

MODELS = ("champion", "challenger")
DATA_SETS = ("holdout", "golden")
# Accuracies are ratios of counts; this keeps 0.96 - 0.95 >= 0.01 true despite rounding.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ModelScores:
    """One model on one data set. Recall is None for a class without samples in the set."""

    count: int
    accuracy: float
    macro_f1: float
    per_class_recall: list[float | None]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class


@dataclass(frozen=True)
class HoldoutEvidence:
    """The paired answers of both models on the holdout, for the evidence criteria.

    `challenger_only` counts the samples the challenger gets right and the champion wrong,
    `champion_only` the reverse (McNemar's discordant pairs); `p_value` is McNemar's exact
    one-sided test that the challenger is right more often (mcnemar_p_value)."""

    class_counts: list[int]  # holdout samples per class, in class_names order
    challenger_only: int
    champion_only: int
    p_value: float


@dataclass(frozen=True)
class PseudoLabelGate:
    """The consensus stage's pseudo-labels checked against feedback, and the bar they must clear.

    `precision` is the share of the `audited` pseudo-labelled parts whose true label is known that
    consensus labelled right; with `audited` 0 it means nothing (consensus passes 0.0) and nothing
    is gated. Below `min_audited` parts the precision is reported but does not gate."""

    precision: float
    audited: int
    min_precision: float
    min_audited: int

    def __post_init__(self) -> None:
        if self.audited < 0:
            raise ValueError(f"audited pseudo-labels must be at least 0, got {self.audited}")
        if not 0.0 <= self.min_precision <= 1.0:
            raise ValueError(f"min_pseudo_label_precision must be in [0, 1], got {self.min_precision}")
        if self.min_audited < 1:
            raise ValueError(f"min_audited_parts must be at least 1, got {self.min_audited}")

    def criterion(self) -> tuple[bool, str] | None:
        """(passed, sentence); None without audited parts, when there is nothing to say."""
        if self.audited == 0:
            return None
        measured = f"pseudo-label precision {self.precision:.3f} on {self.audited} audited parts"
        if self.audited < self.min_audited:
            return True, (f"Not gated: {measured}, fewer than min_audited_parts {self.min_audited} to judge "
                          f"the pseudo-labels by; reported only.")
        if self.precision >= self.min_precision - _TOLERANCE:
            return True, f"Pass: {measured} is at least min_pseudo_label_precision {self.min_precision:.3f}."
        return False, (f"Fail: {measured} is below min_pseudo_label_precision {self.min_precision:.3f}: the "
                       f"challenger was trained and judged on labels too often wrong; not deploying.")


@dataclass(frozen=True)
class AnalysisResult:
    """The deploy decision, its reasons and every score; `scores[model][data_set]`."""

    deploy: bool
    reasons: list[str]
    class_names: list[str]
    scores: dict[str, dict[str, ModelScores]]
    min_improvement: float
    max_golden_regression: float
    report: Path
    evidence: HoldoutEvidence
    min_holdout_per_class: int
    evidence_level: float
    pseudo_labels: PseudoLabelGate | None = None

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics, e.g. `challenger_holdout_accuracy`, for kfp Metrics; with
        McNemar's discordant counts and p-value on the holdout."""
        flat: dict[str, float] = {}
        for model in MODELS:
            for data_set in DATA_SETS:
                score = self.scores[model][data_set]
                flat[f"{model}_{data_set}_accuracy"] = score.accuracy
                flat[f"{model}_{data_set}_macro_f1"] = score.macro_f1
                flat[f"{data_set}_count"] = float(score.count)
        flat["holdout_challenger_only_correct"] = float(self.evidence.challenger_only)
        flat["holdout_champion_only_correct"] = float(self.evidence.champion_only)
        flat["mcnemar_p_value"] = self.evidence.p_value
        return flat

    def accuracy_deltas(self) -> dict[str, float]:
        """Challenger minus champion accuracy per data set, named for people (the Slack message)."""
        return {
            f"{data_set} accuracy": self.scores["challenger"][data_set].accuracy
            - self.scores["champion"][data_set].accuracy
            for data_set in DATA_SETS
        }

    def confusion_matrices(self) -> dict[tuple[str, str], list[list[int]]]:
        """Every confusion matrix by (model, data set), rows the true class, in `class_names` order."""
        return {
            (model, data_set): self.scores[model][data_set].confusion_matrix
            for model in MODELS
            for data_set in DATA_SETS
        }

    def decision(self, champion_version: str) -> dict[str, Any]:
        """The decision document the notify stage reads: the decision, its reasons, the champion
        version it was made against and the accuracy deltas."""
        return {
            "deploy": self.deploy,
            "reasons": list(self.reasons),
            "champion_version": str(champion_version),
            "deltas": self.accuracy_deltas(),
        }

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["report"] = str(self.report)
        return result


def analyze_against_champion(
    challenger_file: Path,
    holdout_set: Path,
    golden_set: Path,
    tracking_uri: str | None,
    registered_model: str,
    min_improvement: float,
    max_golden_regression: float,
    min_holdout_per_class: int,
    evidence_level: float,
    report_out: Path,
    decision_out: Path,
    canary_out: Path,
    canary_size: int = 64,
    pseudo_labels: PseudoLabelGate | None = None,
) -> AnalysisResult:
    """The analyze stage: `analyze` against the model version MLflow's `champion` alias names.

    The champion is looked up when the stage runs, not passed in by the pipeline: the registry
    is the record of what serves, and a champion replaced since the run started is the one the
    challenger must beat.

    Args:
        challenger_file: the challenger's TorchScript model file.
        holdout_set: ImageSet .npz of pseudo-labelled new data.
        golden_set: ImageSet .npz of labelled data from the original distribution.
        tracking_uri: MLflow tracking URI ("" or None: MLFLOW_TRACKING_URI).
        registered_model: the MLflow registered model whose `champion` alias is the model to beat.
        min_improvement: required gain in holdout accuracy (challenger - champion).
        max_golden_regression: allowed loss in golden accuracy (champion - challenger).
        min_holdout_per_class: the holdout needs at least this many samples per class on average.
        evidence_level: the largest McNemar p-value that counts as evidence of a holdout gain.
        report_out: where to write the Markdown report.
        decision_out: where to write AnalysisResult.decision() (JSON), which notify reads.
        canary_out: where to write the deploy stage's smoke test (write_canary).
        canary_size: golden images in the canary batch.
        pseudo_labels: the consensus stage's audited pseudo-label precision and its gate (None: no gate).

    Returns:
        The AnalysisResult; its reasons are also printed, for the stage's log.

    Raises:
        RegistryError: MLflow is unreachable or has no `champion` alias for the model.
    """
    # MLflow takes seconds to import; only this entry point needs it, not the scoring.
    from ctloop import registry

    with tempfile.TemporaryDirectory(prefix="ctloop-analyze-") as scratch:
        version = registry.require_alias(registered_model, registry.CHAMPION, tracking_uri)
        champion = registry.download_version(registered_model, version, scratch, tracking_uri)
        result = analyze(Path(challenger_file), champion.model_file, Path(holdout_set), Path(golden_set),
                         min_improvement, max_golden_regression, min_holdout_per_class, evidence_level,
                         Path(report_out), pseudo_labels)
    write_atomic(Path(decision_out), json.dumps(result.decision(version)).encode("utf-8"))
    write_canary(Path(challenger_file), Path(golden_set), Path(canary_out), canary_size)
    for reason in result.reasons:
        print(reason)
    return result


def write_canary(model_file: Path, golden_set: Path, out: Path, size: int = 64) -> Canary:
    """The first `size` golden images with `model_file`'s in-process answers: what its TorchServe
    version must answer in the deploy stage's smoke test (which then needs no torch of its own)."""
    golden = ImageSet.load(golden_set)
    model, _ = load_model(model_file)
    images, labels = golden.images[:size], golden.labels[:size]
    canary = Canary(images, labels, predict_proba(model, images).astype(np.float32))
    canary.save(out)
    return canary


def analyze(
    challenger_file: Path,
    champion_file: Path,
    holdout_set: Path,
    golden_set: Path,
    min_improvement: float,
    max_golden_regression: float,
    min_holdout_per_class: int,
    evidence_level: float,
    report_out: Path,
    pseudo_labels: PseudoLabelGate | None = None,
) -> AnalysisResult:
    """Score both models on the holdout and the golden set, decide, and write a Markdown report.

    Args:
        challenger_file: The challenger's TorchScript model file.
        champion_file: The serving champion's TorchScript model file.
        holdout_set: ImageSet .npz of pseudo-labelled new data the challenger did not train on.
        golden_set: ImageSet .npz of labelled data from the original distribution.
        min_improvement: Required gain in holdout accuracy (challenger - champion).
        max_golden_regression: Allowed loss in golden accuracy (champion - challenger).
        min_holdout_per_class: The holdout needs at least this many samples per class on average
            (this times the number of classes).
        evidence_level: The largest McNemar p-value that counts as evidence of a holdout gain.
        report_out: Where to write the Markdown report.
        pseudo_labels: The consensus stage's audited pseudo-label precision and its gate (None: no gate).

    Returns:
        The AnalysisResult; `deploy` is False, with the reason, when a set is empty.
    """
    challenger, challenger_card = load_model(challenger_file)
    champion, champion_card = load_model(champion_file)
    data = {"holdout": ImageSet.load(holdout_set), "golden": ImageSet.load(golden_set)}
    paths = {"holdout": holdout_set, "golden": golden_set}
    class_names = data["golden"].class_names
    for name, card, path in (
        ("challenger", challenger_card, challenger_file),
        ("champion", champion_card, champion_file),
    ):
        _check_compatible(name, card, path, data, paths)

    models = {"champion": champion, "challenger": challenger}
    predicted = {
        model: {data_set: _predict(models[model], data[data_set]) for data_set in DATA_SETS}
        for model in MODELS
    }
    classes = len(class_names)
    scores = {
        model: {
            data_set: scores_from_labels(data[data_set].labels, predicted[model][data_set], classes)
            for data_set in DATA_SETS
        }
        for model in MODELS
    }
    evidence = holdout_evidence(data["holdout"].labels, predicted["champion"]["holdout"],
                                predicted["challenger"]["holdout"], classes)
    deploy, reasons = decide(scores, evidence, min_improvement, max_golden_regression,
                             min_holdout_per_class, evidence_level, pseudo_labels)
    result = AnalysisResult(
        deploy,
        reasons,
        list(class_names),
        scores,
        min_improvement,
        max_golden_regression,
        Path(report_out),
        evidence,
        min_holdout_per_class,
        evidence_level,
        pseudo_labels,
    )
    write_atomic(report_out, render_report(result).encode())
    return result


def score_model(model: Any, data: ImageSet) -> ModelScores:
    """Accuracy, macro-F1, per-class recall and the confusion matrix of `model` on `data`."""
    return scores_from_labels(data.labels, _predict(model, data), len(data.class_names))


def _predict(model: Any, data: ImageSet) -> np.ndarray:
    if len(data) == 0:
        return np.zeros(0, np.int64)
    return predict_proba(model, data.images).argmax(axis=1)


def holdout_evidence(
    truth: np.ndarray, champion: np.ndarray, challenger: np.ndarray, classes: int
) -> HoldoutEvidence:
    """The per-class counts and McNemar's discordant pairs of two models' predicted labels."""
    champion_right, challenger_right = champion == truth, challenger == truth
    challenger_only = int(np.sum(challenger_right & ~champion_right))
    champion_only = int(np.sum(champion_right & ~challenger_right))
    return HoldoutEvidence(
        class_counts=np.bincount(truth, minlength=classes).astype(int).tolist(),
        challenger_only=challenger_only,
        champion_only=champion_only,
        p_value=mcnemar_p_value(challenger_only, champion_only),
    )


def mcnemar_p_value(challenger_only: int, champion_only: int) -> float:
    """McNemar's exact test, one-sided: the probability of at least `challenger_only` of the
    discordant pairs going the challenger's way if both models were equally good (each pair a
    fair coin). 1.0 without discordant pairs.

    This is scipy.stats.binomtest(challenger_only, n, 0.5, alternative="greater").pvalue (the
    tests check that), summed exactly here: scipy is no requirement of the analyze stage.
    """
    pairs = challenger_only + champion_only
    if pairs == 0:
        return 1.0
    tail = sum(math.comb(pairs, wins) for wins in range(challenger_only, pairs + 1))
    return min(1.0, tail / 2**pairs)


def scores_from_labels(truth: np.ndarray, predicted: np.ndarray, classes: int) -> ModelScores:
    """The scores of predicted labels against true ones (both int arrays of the same length)."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    recall = [
        float(true_positive[index] / support[index]) if support[index] else None
        for index in range(classes)
    ]
    # F1 = 2TP / (2TP + FP + FN), averaged over the classes that occur in truth or prediction.
    denominator = support + predicted_count
    present = denominator > 0
    f1 = 2 * true_positive[present] / denominator[present]
    count = int(matrix.sum())
    return ModelScores(
        count=count,
        accuracy=float(true_positive.sum() / count) if count else 0.0,
        macro_f1=float(f1.mean()) if present.any() else 0.0,
        per_class_recall=recall,
        confusion_matrix=matrix.tolist(),
    )


def decide(
    scores: dict[str, dict[str, ModelScores]],
    evidence: HoldoutEvidence,
    min_improvement: float,
    max_golden_regression: float,
    min_holdout_per_class: int,
    evidence_level: float,
    pseudo_labels: PseudoLabelGate | None = None,
) -> tuple[bool, list[str]]:
    """Apply every criterion; returns the decision and one sentence per criterion: the gain on
    the new data, the evidence for it (holdout size, McNemar's test; a sentence starting "Not
    enough evidence:" when it is lacking), the golden-set regression, and, when feedback audited
    some pseudo-labels, their precision (PseudoLabelGate.criterion)."""
    reasons: list[str] = []
    passed: list[bool] = []
    champion, challenger = scores["champion"], scores["challenger"]

    holdout = challenger["holdout"].count
    if holdout == 0:
        passed.append(False)
        reasons.append(
            "Fail: the holdout of new data is empty, so there is no evidence that the challenger "
            "is better on it; not deploying."
        )
    else:
        gain = challenger["holdout"].accuracy - champion["holdout"].accuracy
        ok = gain >= min_improvement - _TOLERANCE
        passed.append(ok)
        reasons.append(
            f"{'Pass' if ok else 'Fail'}: on the new data (holdout, {holdout} samples) the "
            f"challenger's accuracy {challenger['holdout'].accuracy:.3f} vs the champion's "
            f"{champion['holdout'].accuracy:.3f} is a change of {gain:+.3f}; "
            f"{'at least' if ok else 'less than'} the required improvement of "
            f"{min_improvement:.3f}."
        )
        for ok, reason in _evidence_criteria(evidence, min_holdout_per_class, evidence_level):
            passed.append(ok)
            reasons.append(reason)

    golden = challenger["golden"].count
    if golden == 0:
        passed.append(False)
        reasons.append(
            "Fail: the golden set is empty, so a regression on the original distribution "
            "cannot be ruled out; not deploying."
        )
    else:
        drop = champion["golden"].accuracy - challenger["golden"].accuracy
        ok = drop <= max_golden_regression + _TOLERANCE
        passed.append(ok)
        change = f"a drop of {drop:.3f}" if drop > 0 else f"a change of {-drop:+.3f}"
        reasons.append(
            f"{'Pass' if ok else 'Fail'}: on the golden set ({golden} samples) the challenger's "
            f"accuracy {challenger['golden'].accuracy:.3f} vs the champion's "
            f"{champion['golden'].accuracy:.3f} is {change}; "
            f"{'within' if ok else 'more than'} the allowed regression of "
            f"{max_golden_regression:.3f}."
        )
    audit = pseudo_labels.criterion() if pseudo_labels is not None else None
    if audit is not None:
        passed.append(audit[0])
        reasons.append(audit[1])
    return all(passed), reasons


def _evidence_criteria(
    evidence: HoldoutEvidence, min_holdout_per_class: int, evidence_level: float
) -> list[tuple[bool, str]]:
    """The holdout-size and McNemar criteria of a non-empty holdout, each (passed, sentence)."""
    counts = evidence.class_counts
    size, needed = sum(counts), min_holdout_per_class * len(counts)
    per_class = ", ".join(str(count) for count in counts)
    if size >= needed:
        sized = (True, f"Pass: the holdout's {size} samples are at least the {needed} required "
                       f"({min_holdout_per_class} per class for {len(counts)} classes).")
    else:
        sized = (False, f"Not enough evidence: the holdout has {size} samples (per class: {per_class}), "
                        f"fewer than the {needed} required ({min_holdout_per_class} per class for "
                        f"{len(counts)} classes); not deploying.")
    ok = evidence.p_value <= evidence_level + _TOLERANCE
    discordant = (f"the challenger alone is right on {evidence.challenger_only} holdout samples and the "
                  f"champion alone on {evidence.champion_only}; McNemar's exact test gives "
                  f"p = {evidence.p_value:.4f}")
    if ok:
        tested = (True, f"Pass: {discordant}, within the evidence level of {evidence_level:.4f}.")
    else:
        tested = (False, f"Not enough evidence: {discordant}, above the evidence level of "
                         f"{evidence_level:.4f}; not deploying.")
    return [sized, tested]


def render_report(result: AnalysisResult) -> str:
    """The Markdown report: decision and reasons, metrics side by side, per-class recall."""
    lines = [
        "# Challenger vs champion",
        "",
        f"**Decision: {'deploy the challenger' if result.deploy else 'do not deploy'}**",
        "",
        "## Reasons",
        "",
        *[f"- {reason}" for reason in result.reasons],
        "",
        "## Metrics",
        "",
        "| data set | samples | metric | champion | challenger | change |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for data_set in DATA_SETS:
        champion = result.scores["champion"][data_set]
        challenger = result.scores["challenger"][data_set]
        for metric in ("accuracy", "macro_f1"):
            old, new = getattr(champion, metric), getattr(challenger, metric)
            change = f"{new - old:+.3f}" if champion.count else "n/a"
            lines.append(
                f"| {data_set} | {champion.count} | {metric.replace('_', '-')} | "
                f"{_number(old, champion.count)} | {_number(new, champion.count)} | {change} |"
            )
    evidence = result.evidence
    lines += [
        "",
        "## Evidence on the new data",
        "",
        "| holdout samples | required | challenger alone right | champion alone right | McNemar p | evidence level |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {sum(evidence.class_counts)} | {result.min_holdout_per_class * len(evidence.class_counts)} | "
        f"{evidence.challenger_only} | {evidence.champion_only} | {evidence.p_value:.4f} | "
        f"{result.evidence_level:.4f} |",
        "",
        "## Per-class recall",
        "",
        "| class | holdout champion | holdout challenger | golden champion | golden challenger | holdout samples |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for index, name in enumerate(result.class_names):
        cells = [
            _recall(result.scores[model][data_set].per_class_recall[index])
            for data_set in DATA_SETS
            for model in MODELS
        ]
        cells.append(str(evidence.class_counts[index]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for data_set in DATA_SETS:
        for model in MODELS:
            lines += ["", f"## Confusion matrix: {model} on the {data_set} (rows: true class)", ""]
            lines += _matrix_table(result.class_names, result.scores[model][data_set])
    lines.append("")
    return "\n".join(lines)


def _check_compatible(
    name: str,
    card: ModelCard,
    path: Path,
    data: dict[str, ImageSet],
    paths: dict[str, Path],
) -> None:
    for data_set, images in data.items():
        if card.class_names != images.class_names:
            raise ValueError(
                f"{path}: the {name} predicts classes {list(card.class_names)} but "
                f"{paths[data_set]} has {list(images.class_names)}"
            )
        if len(images) and card.image_size != images.image_size:
            raise ValueError(
                f"{path}: the {name} expects {card.image_size[0]}x{card.image_size[1]} images but "
                f"{paths[data_set]} has {images.image_size[0]}x{images.image_size[1]}"
            )


def _matrix_table(class_names: list[str], score: ModelScores) -> list[str]:
    if score.count == 0:
        return ["(no samples)"]
    header = "| true \\ predicted | " + " | ".join(class_names) + " |"
    rule = "|---|" + "---:|" * len(class_names)
    rows = [
        f"| {name} | " + " | ".join(str(value) for value in row) + " |"
        for name, row in zip(class_names, score.confusion_matrix)
    ]
    return [header, rule, *rows]


def _number(value: float, count: int) -> str:
    return f"{value:.3f}" if count else "n/a"


def _recall(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
