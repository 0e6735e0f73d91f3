"""consensus-filter against B1 and B2 served by a real TorchServe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ctloop.collected import UNLABELLED, CollectedSet
from components.consensus.logic import (
    BranchUnavailableError,
    ask_branch,
    consensus_filter,
    consensus_filter_on_torchserve,
)
from ctloop.images import stratified_split
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, predict_proba
from serving.client import TorchServeClient
from ctloop.modelfile import ModelCard, save_model
from ctloop.training import RECIPES, train_model, with_epochs
from serving_support import CLASS_NAMES, random_images

pytestmark = pytest.mark.serving


def digits(start: int, stop: int) -> ImageSet:
    data = load_digits()
    return ImageSet((data.images[start:stop] / 16).astype(np.float32),
                    data.target[start:stop].astype(np.int64), CLASS_NAMES)


@pytest.fixture(scope="module")
def branches(serving, tmp_path_factory):
    """Briefly trained B1 and B2: they agree on most digits and disagree on some."""
    folder = tmp_path_factory.mktemp("branches")
    files = {}
    for role in ("b1", "b2"):
        model, _ = train_model(role, digits(0, 600), with_epochs(RECIPES[role], 8), progress=False)
        files[role] = folder / f"{role}.pt"
        save_model(model, ModelCard(role, CLASS_NAMES, (8, 8), role), files[role])
        serving.deploy_archive(files[role], role, "1")
    return files


def collected_set(path: Path, new: np.ndarray, previous: int = 0, truth: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(9)
    images = np.concatenate([new, rng.random((previous, 8, 8), dtype=np.float32)])
    new_labels = truth if truth is not None else np.full(len(new), UNLABELLED)
    CollectedSet(
        images=images,
        labels=np.concatenate([new_labels, np.arange(previous) % 10]).astype(np.int64),
        is_new=np.arange(len(images)) < len(new),
        server_ids=np.array([f"r{i}" if i < len(new) else "" for i in range(len(images))]),
        items=np.where(np.arange(len(images)) < len(new), 0, -1).astype(np.int64),
        class_names=CLASS_NAMES,
    ).save(path)
    return path


def test_branch_answers_match_in_process_predictions(serving, branches) -> None:
    images = random_images(70, seed=3)
    answers = ask_branch(serving.client, "b1", images, batch_size=32)
    model, _ = load_model(branches["b1"])
    expected = predict_proba(model, images)
    np.testing.assert_array_equal(answers.labels, expected.argmax(axis=1))
    np.testing.assert_allclose(answers.confidences, expected.max(axis=1), atol=1e-4)


def test_keeps_exactly_the_confident_agreements(serving, branches, tmp_path: Path) -> None:
    window = digits(1000, 1120)
    images, truth = window.images, window.labels
    path = collected_set(tmp_path / "collected.npz", images, previous=30, truth=truth)
    threshold = 0.5
    report = consensus_filter(path, serving.client, threshold, 0.2, 50, 0,
                              tmp_path / "train.npz", tmp_path / "holdout.npz", tmp_path / "report.md")
    probs = [predict_proba(load_model(branches[role])[0], images) for role in ("b1", "b2")]
    labels = [p.argmax(axis=1) for p in probs]
    keep = (labels[0] == labels[1]) & (probs[0].max(axis=1) >= threshold) & (probs[1].max(axis=1) >= threshold)
    train, holdout = ImageSet.load(tmp_path / "train.npz"), ImageSet.load(tmp_path / "holdout.npz")
    assert report.window == 120 and report.kept == keep.sum()
    assert 0 < report.kept < 120 and report.disagreed > 0
    assert len(train) + len(holdout) == keep.sum() + 30
    assert report.previous_size == 30 and report.train_size == len(train)
    assert np.asarray(report.agreement).sum() == 120
    assert sum(report.per_class.values()) == report.kept
    assert report.pseudo_label_precision == pytest.approx(float((labels[0][keep] == truth[keep]).mean()))
    assert report.disagreement == pytest.approx(float((labels[0] != labels[1]).mean()))
    assert report.estimated_branch_accuracy == pytest.approx(1 - report.disagreement)
    branch_accuracy = np.mean([(branch_labels == truth).mean() for branch_labels in labels])
    assert report.branch_audited_accuracy == pytest.approx(float(branch_accuracy))
    kept_images = images[keep]
    for image, label in zip(holdout.images, holdout.labels):
        match = np.flatnonzero((kept_images == image).all(axis=(1, 2)))
        assert len(match) == 1 and labels[0][keep][match[0]] == label
    assert "Agreement matrix" in (tmp_path / "report.md").read_text()


def test_the_stage_entry_point_takes_the_keys_from_the_environment(serving, branches, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    window = digits(1200, 1260)
    path = collected_set(tmp_path / "collected.npz", window.images, previous=10, truth=window.labels)
    expected = consensus_filter(path, serving.client, 0.5, 0.2, 16, 3, tmp_path / "expected-train.npz",
                                tmp_path / "expected-holdout.npz", tmp_path / "expected-report.md", new_repeat=2)
    monkeypatch.setenv("CTLOOP_TS_KEY_FILE", str(serving.server.key_file))
    report = consensus_filter_on_torchserve(path, serving.server.inference_url, serving.server.management_url, 0.5,
                                            0.2, 16, 3, tmp_path / "train.npz", tmp_path / "holdout.npz",
                                            tmp_path / "report.md", new_repeat=2)
    assert report == expected and report.kept > 0
    for name in ("train", "holdout"):
        written, reference = (ImageSet.load(tmp_path / f"{prefix}{name}.npz") for prefix in ("", "expected-"))
        np.testing.assert_array_equal(written.images, reference.images)
        np.testing.assert_array_equal(written.labels, reference.labels)
    assert (tmp_path / "report.md").read_text() == (tmp_path / "expected-report.md").read_text()


def test_the_stage_entry_point_without_keys_says_where_to_put_them(tmp_path: Path) -> None:
    from serving.client import TorchServeError

    with pytest.raises(TorchServeError, match="no TorchServe keys: set CTLOOP_TS_KEY_FILE or CTLOOP_TS_MANAGEMENT_KEY"):
        consensus_filter_on_torchserve(tmp_path / "collected.npz", "http://127.0.0.1:9", "http://127.0.0.1:9", 0.5,
                                       0.2, 16, 0, tmp_path / "train.npz", tmp_path / "holdout.npz",
                                       tmp_path / "report.md")
    assert not (tmp_path / "train.npz").exists()


def test_nothing_kept_when_threshold_is_unreachable(serving, branches, tmp_path: Path) -> None:
    path = collected_set(tmp_path / "collected.npz", random_images(20, seed=5))
    report = consensus_filter(path, serving.client, 1.0, 0.1, 64, 0,
                              tmp_path / "train.npz", tmp_path / "holdout.npz", tmp_path / "report.md")
    assert report.kept == 0 and report.kept_share == 0.0
    assert len(ImageSet.load(tmp_path / "holdout.npz")) == 0


def test_a_branch_that_is_down_fails_clearly_after_bounded_retries(serving, tmp_path: Path) -> None:
    dead = TorchServeClient("http://127.0.0.1:9", serving.server.management_url, serving.server.keys(),
                            retries=2, backoff=0.01)
    with pytest.raises(BranchUnavailableError, match=r"branch model 'b1' unavailable after 3 attempts"):
        ask_branch(dead, "b1", random_images(4, seed=6), batch_size=4)


def test_an_unknown_branch_model_is_not_retried(serving) -> None:
    from serving.client import TorchServeError

    patient = TorchServeClient(serving.server.inference_url, serving.server.management_url, serving.server.keys(),
                               retries=5, backoff=10)
    with pytest.raises(TorchServeError, match="404") as caught:
        ask_branch(patient, "b9", random_images(2, seed=7), batch_size=2)
    assert caught.value.attempts == 1
    patient.close()


@pytest.mark.parametrize(
    ("labels", "ratio", "val_counts"),
    [
        ([0] * 10 + [1] * 10, 0.1, {0: 1, 1: 1}),
        ([0] * 10 + [1], 0.5, {0: 5, 1: 0}),
        ([2], 0.9, {2: 0}),
        ([], 0.1, {}),
    ],
)
def test_stratified_split_holds_out_per_class_and_keeps_singletons(labels, ratio, val_counts) -> None:
    labels = np.asarray(labels, np.int64)
    train, val = stratified_split(labels, ratio, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    for label, count in val_counts.items():
        assert (labels[val] == label).sum() == count
        assert (labels[train] == label).sum() >= 1
