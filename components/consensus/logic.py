"""consensus-filter: pseudo-label the window where the two branch models agree.

A sample is kept only if B1 and B2 predict the same label and both are at least
`confidence_threshold` sure; that label becomes its pseudo-label. The branch models were chosen
to fail differently, so agreement is strong evidence and disagreement costs only coverage.

The kept samples are split, stratified, into training rows and a holdout that the analyze stage
uses as "new data"; previous training rows are added to the training side only.

How often the branches disagree on the whole window is also an estimate of their accuracy there
without any label (Jiang et al., ICLR 2022: the disagreement rate of two independently trained
models tracks their test error), so the report carries `1 - disagreement` as the branches'
estimated accuracy, and beside it their accuracy on the window's audited parts when feedback
gave some a label.

When feedback labelled some of the kept parts, the share whose pseudo-label was right is the
pseudo-label precision; it and the number of those parts go to the analyze stage, which refuses
to deploy a challenger trained on pseudo-labels that are too often wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.collected import UNLABELLED, CollectedSet
from ctloop.images import ImageSet, stratified_split, write_atomic
from serving.client import TorchServeClient, TorchServeError, client_from_env


class BranchUnavailableError(RuntimeError):
    """A branch model could not be reached after the retries; an infrastructure fault."""


@dataclass(frozen=True)
class BranchAnswers:
    labels: np.ndarray
    confidences: np.ndarray


@dataclass(frozen=True)
class ConsensusReport:
    window: int
    kept: int
    kept_share: float
    per_class: dict[str, int]
    agreement: list[list[int]]
    disagreed: int
    branch_audited_accuracy: float | None
    unconfident: int
    train_size: int
    holdout_size: int
    previous_size: int
    pseudo_label_precision: float | None
    audited_pseudo_labels: int  # kept parts whose true label is known: what the precision is measured on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def disagreement(self) -> float:
        """The share of the window on which B1 and B2 gave different labels."""
        return self.disagreed / self.window if self.window else 0.0

    @property
    def estimated_branch_accuracy(self) -> float:
        """The disagreement estimate of B1's and B2's accuracy on the window (no labels used)."""
        return 1.0 - self.disagreement

    def metrics(self) -> dict[str, float]:
        """Scalar metrics; the audited figures only when feedback gave some rows a label."""
        names = ("kept", "kept_share", "train_size", "holdout_size", "disagreement", "estimated_branch_accuracy")
        figures = {name: float(getattr(self, name)) for name in names}
        for name in ("pseudo_label_precision", "branch_audited_accuracy"):
            if getattr(self, name) is not None:
                figures[name] = getattr(self, name)
        if self.pseudo_label_precision is not None:
            figures["audited_pseudo_labels"] = float(self.audited_pseudo_labels)
        return figures

    @property
    def precision_or_zero(self) -> float:
        """pseudo_label_precision as a stage output, which cannot be None: 0.0 when no kept part
        was audited (audited_pseudo_labels 0 says so, and then nothing is gated on it)."""
        return 0.0 if self.pseudo_label_precision is None else self.pseudo_label_precision


def ask_branch(client: TorchServeClient, model_name: str, images: np.ndarray, batch_size: int) -> BranchAnswers:
    """Labels and confidences of `model_name` for `images`, sent in .npy batches.

    The client retries (ctloop.http's policy: connection failures and 429/502/503/504, with
    backoff). A 4xx is the request's fault and is raised at once as the TorchServeError; what
    still fails after the retries (unreachable, 5xx) is a BranchUnavailableError.
    """
    labels, confidences = [], []
    for start in range(0, len(images), batch_size):
        try:
            answer = client.predict_batch(model_name, images[start : start + batch_size])
        except TorchServeError as error:
            if 400 <= error.status < 500:
                raise
            attempts = f"{error.attempts} attempt{'s' if error.attempts != 1 else ''}"
            raise BranchUnavailableError(
                f"branch model {model_name!r} unavailable after {attempts}: {error}"
            ) from error
        labels.extend(answer["labels"])
        confidences.extend(answer["confidences"])
    return BranchAnswers(np.asarray(labels, np.int64), np.asarray(confidences, np.float64))


def consensus_filter(
    collected_path: Path,
    client: TorchServeClient,
    confidence_threshold: float,
    val_ratio: float,
    batch_size: int,
    seed: int,
    train_out: Path,
    holdout_out: Path,
    report_out: Path,
    new_repeat: int = 1,
    branches: tuple[str, str] = ("b1", "b2"),
) -> ConsensusReport:
    """Pseudo-label the collected window with B1 and B2; write train and holdout ImageSets.

    `new_repeat` repeats each pseudo-labelled training row, so that a window of a few hundred
    drifted parts is not drowned by a previous training set several times its size.
    """
    if new_repeat < 1:
        raise ValueError(f"new_repeat must be at least 1, got {new_repeat}")
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
    if not 0.0 <= val_ratio <= 0.9:
        raise ValueError(f"val_ratio must be in [0, 0.9], got {val_ratio}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    collected = CollectedSet.load(collected_path)
    new = np.flatnonzero(collected.is_new)
    images = collected.images[new]
    first, second = (ask_branch(client, name, images, batch_size) for name in branches)
    agree = first.labels == second.labels
    confident = (first.confidences >= confidence_threshold) & (second.confidences >= confidence_threshold)
    keep = agree & confident
    pseudo = ImageSet(images[keep], first.labels[keep], collected.class_names)
    train_index, holdout_index = stratified_split(pseudo.labels, val_ratio, seed)
    previous = ~collected.is_new
    repeated = np.repeat(train_index, new_repeat)
    train = ImageSet(
        np.concatenate([pseudo.images[repeated], collected.images[previous]]),
        np.concatenate([pseudo.labels[repeated], collected.labels[previous]]),
        collected.class_names,
    )
    holdout = pseudo.subset(holdout_index)
    train.save(train_out)
    holdout.save(holdout_out)
    report = _report(collected, new, first, second, keep, len(train), len(holdout))
    write_atomic(report_out, _markdown(report, confidence_threshold, branches).encode())
    return report


def consensus_filter_on_torchserve(
    collected_path: Path,
    inference_url: str,
    management_url: str,
    confidence_threshold: float,
    val_ratio: float,
    batch_size: int,
    seed: int,
    train_out: Path,
    holdout_out: Path,
    report_out: Path,
    new_repeat: int = 1,
) -> ConsensusReport:
    """The consensus-filter stage: consensus_filter with B1 and B2 as TorchServe serves them.

    The keys come from the environment (serving.client.client_from_env), never from pipeline
    parameters, which Kubeflow shows to anyone who can see the run.

    Args:
        collected_path: the validated CollectedSet (.npz).
        inference_url: TorchServe inference API serving b1 and b2.
        management_url: TorchServe management API.
        confidence_threshold: each branch must be at least this confident.
        val_ratio: share of pseudo-labelled samples held out, per class.
        batch_size: images per request to a branch model.
        seed: seed of the split.
        train_out: where to write the training rows (ImageSet .npz).
        holdout_out: where to write the holdout (ImageSet .npz).
        report_out: where to write the Markdown report.
        new_repeat: how often each pseudo-labelled training row is repeated.
    """
    client = client_from_env(inference_url, management_url)
    try:
        return consensus_filter(Path(collected_path), client, confidence_threshold, val_ratio, batch_size, seed,
                                Path(train_out), Path(holdout_out), Path(report_out), new_repeat)
    finally:
        client.close()


def _report(
    collected: CollectedSet,
    new: np.ndarray,
    first: BranchAnswers,
    second: BranchAnswers,
    keep: np.ndarray,
    train_size: int,
    holdout_size: int,
) -> ConsensusReport:
    classes = len(collected.class_names)
    agreement = np.zeros((classes, classes), np.int64)
    np.add.at(agreement, (first.labels, second.labels), 1)
    kept_labels = first.labels[keep]
    window_truth = collected.labels[new]
    truth = window_truth[keep]
    known = truth != UNLABELLED
    return ConsensusReport(
        window=len(new),
        kept=int(keep.sum()),
        kept_share=float(keep.mean()) if len(new) else 0.0,
        per_class={name: int((kept_labels == i).sum()) for i, name in enumerate(collected.class_names)},
        agreement=agreement.tolist(),
        disagreed=int((first.labels != second.labels).sum()),
        branch_audited_accuracy=_audited_accuracy((first, second), window_truth),
        unconfident=int(((first.labels == second.labels) & ~keep).sum()),
        train_size=train_size,
        holdout_size=holdout_size,
        previous_size=int((~collected.is_new).sum()),
        pseudo_label_precision=float((kept_labels[known] == truth[known]).mean()) if known.any() else None,
        audited_pseudo_labels=int(known.sum()),
    )


def _audited_accuracy(branches: tuple[BranchAnswers, ...], truth: np.ndarray) -> float | None:
    """The branches' mean accuracy on the rows whose true label is known; None without any."""
    audited = truth != UNLABELLED
    if not audited.any():
        return None
    return float(np.mean([(answers.labels[audited] == truth[audited]).mean() for answers in branches]))


def _markdown(report: ConsensusReport, threshold: float, branches: tuple[str, str]) -> str:
    names = list(report.per_class)
    lines = [
        "# Consensus filter",
        "",
        f"{report.kept} of {report.window} window samples kept ({report.kept_share:.1%}): "
        f"{branches[0]} and {branches[1]} agreed, each with confidence >= {threshold}.",
        f"Disagreed: {report.disagreed}. Agreed but not confident: {report.unconfident}.",
        f"Estimated branch accuracy on the window (1 - disagreement): {report.estimated_branch_accuracy:.3f}.",
        f"Training rows: {report.train_size} (incl. {report.previous_size} previous, pseudo-labelled "
        f"rows repeated as configured); "
        f"holdout: {report.holdout_size}.",
    ]
    if report.pseudo_label_precision is not None:
        lines.append(f"Pseudo-label precision against known labels: {report.pseudo_label_precision:.3f} "
                     f"on {report.audited_pseudo_labels} audited parts.")
    if report.branch_audited_accuracy is not None:
        lines.append(f"Branch accuracy on the window's audited parts: {report.branch_audited_accuracy:.3f}.")
    lines += ["", "| class | kept |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in report.per_class.items()]
    lines += ["", f"Agreement matrix (rows {branches[0]}, columns {branches[1]}):", ""]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("| --- " * (len(names) + 1) + "|")
    for name, row in zip(names, report.agreement):
        lines.append(f"| **{name}** | " + " | ".join(str(count) for count in row) + " |")
    return "\n".join(lines) + "\n"
