"""kfp wrapper of the analyze stage: forwards to components.analyze.logic.analyze_against_champion."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def analyze_op(
    challenger: Input[Model],
    holdout_set: Input[Dataset],
    golden_set: Input[Dataset],
    mlflow_tracking_uri: str,
    registered_model: str,
    min_improvement: float,
    max_golden_regression: float,
    min_holdout_per_class: int,
    evidence_level: float,
    pseudo_label_precision: float,
    audited_pseudo_labels: int,
    min_pseudo_label_precision: float,
    min_audited_parts: int,
    run_name: str,
    report: Output[Markdown],
    decision: Output[Artifact],
    canary: Output[Dataset],
    metrics: Output[Metrics],
    challenger_new_data: Output[ClassificationMetrics],
    champion_new_data: Output[ClassificationMetrics],
    challenger_golden: Output[ClassificationMetrics],
    champion_golden: Output[ClassificationMetrics],
) -> bool:
    """Challenger vs champion on the new data and the golden set; returns whether to deploy.

    Args:
        challenger: the challenger's model file (from train).
        holdout_set: pseudo-labelled holdout of the new data (from consensus-filter).
        golden_set: labelled golden set of the original distribution.
        mlflow_tracking_uri: MLflow tracking URI ("" uses MLFLOW_TRACKING_URI).
        registered_model: MLflow registered model; its `champion` alias is the model to beat.
        min_improvement: the challenger must beat the champion on new data by at least this.
        max_golden_regression: the challenger may lose at most this on the golden set.
        min_holdout_per_class: the holdout must hold at least this many samples per class on average.
        evidence_level: McNemar's one-sided p on the holdout must be at most this to count as a gain.
        pseudo_label_precision: consensus' pseudo-label precision on its audited parts (0.0 without any).
        audited_pseudo_labels: how many pseudo-labelled parts feedback audited (from consensus-filter).
        min_pseudo_label_precision: with enough audited parts, a lower precision blocks the deploy.
        min_audited_parts: fewer audited parts are reported but do not gate.
        run_name: the pipeline run, for alerts.
        report: metrics side by side, per-class recall, decision and reasons.
        decision: the decision, its reasons and the metric deltas (JSON), for the Slack message.
        canary: golden images with the challenger's in-process answers, for deploy's smoke test.
        metrics: accuracies and macro-F1 of both models on both sets, McNemar's p and discordant counts.
        challenger_new_data: the challenger's confusion matrix on the new data.
        champion_new_data: the champion's confusion matrix on the new data.
        challenger_golden: the challenger's confusion matrix on the golden set.
        champion_golden: the champion's confusion matrix on the golden set.
    """
    from pathlib import Path

    from components.analyze.logic import PseudoLabelGate, analyze_against_champion
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("analyze", run_name):
        pseudo_labels = PseudoLabelGate(pseudo_label_precision, audited_pseudo_labels, min_pseudo_label_precision,
                                        min_audited_parts)
        result = analyze_against_champion(Path(challenger.path), Path(holdout_set.path), Path(golden_set.path),
                                          mlflow_tracking_uri, registered_model, min_improvement,
                                          max_golden_regression, min_holdout_per_class, evidence_level,
                                          Path(report.path), Path(decision.path), Path(canary.path),
                                          pseudo_labels=pseudo_labels)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    push_figures("analyze", {**result.metrics(), "deploy": result.deploy})
    outputs = {("challenger", "holdout"): challenger_new_data, ("champion", "holdout"): champion_new_data,
               ("challenger", "golden"): challenger_golden, ("champion", "golden"): champion_golden}
    for key, matrix in result.confusion_matrices().items():
        outputs[key].log_confusion_matrix(result.class_names, matrix)
    return result.deploy
