"""Zero-downtime deploy of a model version to a running TorchServe, with rollback.

register -> wait until ready -> smoke test on a canary batch (must equal the in-process
predictions of the same model file, computed by the caller: this module needs no torch) -> set
default -> verify -> done. Any failure rolls back: the previous default is (again) the default and
the new version, if this deploy registered it, is unregistered. A version an earlier attempt
registered is carried on from the wait, never unregistered: it may be what serves. Requests keep
flowing to the previous default until the atomic set-default, so no request fails during a deploy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from serving.client import TorchServeClient, TorchServeError
from serving.fleet import ReadyError, wait_ready


class DeployCheckError(RuntimeError):
    """A deploy step ran but its result is wrong (not ready, wrong answers, wrong version)."""


@dataclass
class DeployStep:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class DeployRecord:
    """What a deploy did: outcome is "deployed", "rolled_back", or "rollback_incomplete" (a rollback
    step failed too, e.g. TorchServe went away); reason says why, the first failure first."""

    model_name: str
    new_version: str
    old_version: str | None
    outcome: str = "rolled_back"
    reason: str = ""
    steps: list[DeployStep] = field(default_factory=list)
    canary_accuracy: float | None = None


def deploy(
    client: TorchServeClient,
    archive: str | Path,
    model_name: str,
    version: str,
    canary_images: np.ndarray,
    expected: np.ndarray,
    canary_labels: np.ndarray | None = None,
    workers: int = 1,
    ready_timeout: float = 120.0,
    tolerance: float = 1e-4,
) -> DeployRecord:
    """Deploy `archive` as `model_name` version `version`; never leaves a half-deployed default.

    Args:
        client: a client of the target TorchServe (management and inference keys).
        archive: the .mar, already in the server's model store (registered by file name).
        model_name: serving name: champion, b1, b2 or eval.
        version: the registry's model version; must equal the archive's version.
        canary_images: float32 (N, H, W) in [0, 1], sent with the canary header (not logged).
        expected: in-process probabilities (N, classes) of the same model file on canary_images.
        canary_labels: true labels of the canary batch, only to report its accuracy.
        workers: workers of the new version.
        ready_timeout: seconds to wait for the workers to be READY.
        tolerance: largest allowed |confidence difference| against in-process predictions.
    """
    probabilities = np.asarray(expected, dtype=np.float32)
    if probabilities.ndim != 2 or len(probabilities) != len(canary_images):
        raise ValueError(f"expected must be in-process probabilities of shape ({len(canary_images)}, classes) "
                         f"for the {len(canary_images)} canary images, got shape {probabilities.shape}")
    record = DeployRecord(model_name, str(version), _current_default(client, model_name))
    registered = default_changed = False
    try:
        # Registered already: an earlier attempt died after registering; carry on from there.
        if str(version) not in _registered_versions(client, model_name):
            registered = True  # a failed registration (e.g. workers fail to load) may still leave it registered
            _step(record, "register", lambda: client.register(Path(archive).name, model_name, workers, wait=False))
        _step(record, "wait_ready", lambda: _wait_ready(client, model_name, str(version), workers, ready_timeout))
        labels = _step(record, "smoke_test", lambda: check_answers(
            client, model_name, canary_images, probabilities, tolerance, str(version), str(version)))
        _step(record, "set_default", lambda: client.set_default(model_name, str(version)))
        default_changed = True
        _step(record, "verify", lambda: _verify_default(client, model_name, str(version), canary_images,
                                                        probabilities, tolerance))
    except (TorchServeError, DeployCheckError) as error:
        record.reason = str(error)
        try:
            _roll_back(client, record, registered, default_changed)
        except TorchServeError as rollback_error:  # e.g. TorchServe itself went away
            record.outcome = "rollback_incomplete"
            record.reason += f"; rollback incomplete ({rollback_error})"
        return record
    record.outcome = "deployed"
    if canary_labels is not None:
        record.canary_accuracy = float(np.mean(np.asarray(labels) == np.asarray(canary_labels)))
    return record


def _step(record: DeployRecord, name: str, action: Callable[[], object]) -> object:
    """Run one step, timing it into the record whether it succeeds or fails."""
    start = time.monotonic()
    try:
        result = action()
    except (TorchServeError, DeployCheckError) as error:
        record.steps.append(DeployStep(name, time.monotonic() - start, False, str(error)))
        raise
    record.steps.append(DeployStep(name, time.monotonic() - start, True))
    return result


def _current_default(client: TorchServeClient, model_name: str) -> str | None:
    try:
        return client.default_version(model_name)
    except TorchServeError as error:
        if error.status == 404:
            return None
        raise


def _registered_versions(client: TorchServeClient, model_name: str) -> list[str]:
    try:
        return client.versions(model_name)
    except TorchServeError as error:
        if error.status == 404:
            return []
        raise


def _wait_ready(client: TorchServeClient, model_name: str, version: str, workers: int, timeout: float) -> None:
    try:
        wait_ready(client, model_name, version, workers, timeout)
    except ReadyError as error:
        raise DeployCheckError(str(error)) from error


def _answers(client: TorchServeClient, model_name: str, images: np.ndarray,
             version: str | None) -> tuple[list[int], list[float], str | None]:
    """Labels, confidences and answering version (champion only) of one model."""
    if model_name == "champion":
        prediction = client.predict(model_name, images, version=version, canary=True)
        return prediction.labels, prediction.confidences, prediction.model_version
    answer = client.predict_batch(model_name, images, version=version)
    if "probabilities" in answer:
        return answer["labels"], [max(row) for row in answer["probabilities"]], None
    return answer["labels"], answer["confidences"], None


def check_answers(client: TorchServeClient, model_name: str, images: np.ndarray, probabilities: np.ndarray,
                   tolerance: float, url_version: str | None, version: str) -> list[int]:
    """The served answers must equal the in-process ones (same labels, confidences within
    tolerance) and come from `version` (the champion says which version answered)."""
    labels, confidences, answered_by = _answers(client, model_name, images, url_version)
    expected_labels = probabilities.argmax(axis=1)
    if list(labels) != expected_labels.tolist():
        wrong = int(np.sum(np.asarray(labels) != expected_labels))
        raise DeployCheckError(f"{wrong} of {len(expected_labels)} canary labels differ from in-process predictions")
    gap = float(np.max(np.abs(np.asarray(confidences) - probabilities.max(axis=1))))
    if gap > tolerance:
        raise DeployCheckError(f"canary confidences differ from in-process ones by {gap:.2g} > {tolerance:g}")
    if answered_by is not None and answered_by != version:
        raise DeployCheckError(f"/predictions/{model_name} answered with version {answered_by}, expected {version}")
    return list(labels)


def _verify_default(client: TorchServeClient, model_name: str, version: str, images: np.ndarray,
                    probabilities: np.ndarray, tolerance: float) -> None:
    """After set-default: TorchServe reports the new default and the unversioned URL answers with it."""
    default = client.default_version(model_name)
    if default != version:
        raise DeployCheckError(f"default version is {default} after set-default, expected {version}")
    check_answers(client, model_name, images, probabilities, tolerance, None, version)


def _roll_back(client: TorchServeClient, record: DeployRecord, registered: bool, default_changed: bool) -> None:
    """Restore the previous default first (so traffic is served), then drop the new version."""
    if default_changed and record.old_version is not None:
        _step(record, "restore_default", lambda: client.set_default(record.model_name, record.old_version))
    if registered:
        _step(record, "unregister_new", lambda: _unregister_if_present(client, record.model_name, record.new_version))


def _unregister_if_present(client: TorchServeClient, model_name: str, version: str) -> None:
    try:
        client.unregister(model_name, version)
    except TorchServeError as error:
        if error.status != 404:
            raise
