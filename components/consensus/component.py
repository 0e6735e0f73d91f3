"""kfp wrapper of the consensus-filter stage: forwards to
components.consensus.logic.consensus_filter_on_torchserve."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def consensus_op(
    collected: Input[Dataset],
    ts_inference_url: str,
    ts_management_url: str,
    confidence_threshold: float,
    val_ratio: float,
    batch_size: int,
    new_repeat: int,
    seed: int,
    run_name: str,
    train_set: Output[Dataset],
    holdout_set: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("ConsensusOutputs", [("kept", int), ("kept_share", float), ("disagreement", float),
                                     ("pseudo_label_precision", float), ("audited_pseudo_labels", int)]):
    """Pseudo-label the window where B1 and B2 agree confidently; split train and holdout.

    Args:
        collected: the validated samples (from collect).
        ts_inference_url: TorchServe inference API serving b1 and b2.
        ts_management_url: TorchServe management API (keys come from the environment).
        confidence_threshold: each branch must be at least this confident.
        val_ratio: share of pseudo-labelled samples held out, per class.
        batch_size: images per request to a branch model.
        new_repeat: how often each pseudo-labelled training row is repeated.
        seed: seed of the split.
        run_name: the pipeline run, for alerts.
        train_set: pseudo-labelled training rows plus previous rows (ImageSet .npz).
        holdout_set: pseudo-labelled holdout (ImageSet .npz), the analyze stage's new data.
        report: kept share, per-class counts and the B1/B2 agreement matrix.
        metrics: kept, kept_share, train_size, holdout_size, disagreement and estimated_branch_accuracy;
            pseudo_label_precision, audited_pseudo_labels and branch_audited_accuracy when labels are known.

    Returns:
        kept, kept_share and disagreement; pseudo_label_precision on the audited_pseudo_labels kept
        parts whose true label is known (0.0 when there are none), for analyze's gate.
    """
    from collections import namedtuple
    from pathlib import Path

    from components.consensus.logic import consensus_filter_on_torchserve
    from ctloop.alerts import alert_on_failure
    from ctloop.pushmetrics import push_figures

    with alert_on_failure("consensus-filter", run_name):
        result = consensus_filter_on_torchserve(Path(collected.path), ts_inference_url, ts_management_url,
                                                confidence_threshold, val_ratio, batch_size, seed, Path(train_set.path),
                                                Path(holdout_set.path), Path(report.path), new_repeat)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    push_figures("consensus", result.metrics())
    outputs = namedtuple("ConsensusOutputs",
                         "kept kept_share disagreement pseudo_label_precision audited_pseudo_labels")
    return outputs(result.kept, result.kept_share, result.disagreement, result.precision_or_zero,
                   result.audited_pseudo_labels)
