"""Figures a user can judge a cycle by: what consensus and analyze reported, and how the old and
the new champion do on parts whose true labels are known (the demo's simulator, the sub-folders
of `ctloop run`'s production ImageFolder)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ctloop import registry
from ctloop.images import ImageSet
from ctloop.modelfile import load_model
from ctloop.training import accuracy
from ctloop_app.local_run import LocalRun
from ctloop_app.stack import REGISTERED_MODEL


def optional_figure(value: float | None) -> str:
    """A figure to three decimals, or "n/a" for one that could not be measured (no audited parts)."""
    return "n/a" if value is None else f"{value:.3f}"


def champion_accuracies(tracking_uri: str, versions: list[str], parts: ImageSet) -> dict[str, float]:
    """Accuracy of each registered version on `parts`, in-process, by version."""
    scores = {}
    with tempfile.TemporaryDirectory() as scratch:
        for version in dict.fromkeys(versions):
            files = registry.download_version(REGISTERED_MODEL, version, Path(scratch) / version, tracking_uri)
            scores[version] = accuracy(load_model(files.model_file)[0], parts)
    return scores


def cycle_figures(run: LocalRun) -> dict[str, Any]:
    """The monitor's reason and ATC estimate; the drift test's reason and the signals that retrain;
    consensus' kept share, pseudo-label precision and
    the branches' estimated and audited accuracy (None without audited parts in the window); and
    analyze's decision with its reasons. What did not run is left out."""
    figures: dict[str, Any] = {}
    monitor = run.task("monitor-op")
    if monitor is not None and "decision" in monitor.artifacts:
        decision = json.loads(Path(monitor.artifacts["decision"]["uri"]).read_text())
        figures["monitor"], figures["estimated_accuracy"] = decision["reason"], decision.get("estimated_accuracy")
    drift = run.task("drift-op")
    if drift is not None and "decision" in drift.artifacts:
        decision = json.loads(Path(drift.artifacts["decision"]["uri"]).read_text())
        figures["drift"], figures["signals"] = decision["drift"]["reason"], decision["signals"]
    consensus = run.task("consensus-op")
    if consensus is not None and "metrics" in consensus.artifacts:
        metrics = consensus.artifacts["metrics"]["metadata"]
        for name in ("kept_share", "pseudo_label_precision", "estimated_branch_accuracy", "branch_audited_accuracy"):
            figures[name] = metrics.get(name)
    analyze = run.task("analyze-op")
    if analyze is not None and "decision" in analyze.artifacts:
        decision = json.loads(Path(analyze.artifacts["decision"]["uri"]).read_text())
        figures["deploy"], figures["reasons"] = decision["deploy"], decision["reasons"]
    return figures

