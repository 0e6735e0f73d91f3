"""Helpers for deploy tests: a challenger registered as train leaves it, with its canary as
analyze leaves it, and the aliases that name the champion."""

from __future__ import annotations

from pathlib import Path

from components.analyze.logic import write_canary
from ctloop import registry
from ctloop.registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from serving_support import write_model


def new_challenger(folder: Path, tracking_uri: str, seed: int, golden_set: Path,
                   registered: str = "ctloop-champion", train_set: Path | None = None) -> tuple[Path, str, Path]:
    """A challenger registered as the next version (with `train_set` as its training set), with the
    alias `challenger`, and its canary batch."""
    folder.mkdir(parents=True, exist_ok=True)
    model = write_model("champion", folder / "challenger.pt", seed)
    version = registry.register_model_file(registered, model, train_set, tracking_uri=tracking_uri, alias=CHALLENGER)
    write_canary(model, golden_set, folder / "canary.npz")
    return model, version, folder / "canary.npz"


def aliases(tracking_uri: str, registered: str = "ctloop-champion") -> dict[str, str | None]:
    return {alias: registry.get_version_by_alias(registered, alias, tracking_uri)
            for alias in (CHAMPION, PREVIOUS_CHAMPION)}
