"""One continuous-training cycle on a user's own production images (`ctloop run`).

The bootstrapped models are served, the production ImageFolder is played through the champion
(a quarter of the parts, chosen at random, report their folder's label as audit feedback), and
the pipeline runs once: it retrains and deploys only if the monitor and the analysis say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctloop.config import PipelineConfig
from ctloop.imagefolder import read_image_folder
from ctloop.images import ImageSet
from ctloop.modelfile import load_model
from ctloop.models import ROLES
from ctloop_app.stack import install_models, local_stack
from ctloop_app.traffic import Traffic
from ctloop_app.local_run import run_cycle


@dataclass(frozen=True)
class LineResult:
    succeeded: bool
    parts: int
    champion_before: str
    champion_after: str
    stages: tuple[str, ...]
    error: str | None

    def __str__(self) -> str:
        outcome = "succeeded" if self.succeeded else f"FAILED: {self.error}"
        return (f"pipeline {outcome}; {self.parts} parts played; champion v{self.champion_before} -> "
                f"v{self.champion_after}; stages: {', '.join(self.stages)}")


def run_on_folder(models: Path, production_folder: Path, work_dir: Path, config: PipelineConfig,
                  audit_share: float = 0.25, mlflow_server: bool = True) -> LineResult:
    """Serve `models` (a `ctloop bootstrap` folder), play `production_folder`, run one cycle."""
    files = {role: models / "models" / f"{role}.pt" for role in ROLES}
    _, card = load_model(files["champion"])
    parts = read_image_folder(production_folder, card.image_size, card.class_names)
    config = config.with_overrides(recent_window=min(config.recent_window, len(parts)))
    with local_stack(work_dir, mlflow_server) as stack:
        before = install_models(stack, files, models / "data" / "train.npz")
        Traffic(stack.client, stack.store_dir, audit_share, config.seed).send(_shuffled(parts, config.seed))
        run = run_cycle(stack, config, models / "data" / "golden.npz", work_dir / "pipeline_root")
        after = stack.client.default_version("champion")
    return LineResult(run.succeeded, len(parts), before, after, tuple(run.tasks), run.error)


def _shuffled(parts: ImageSet, seed: int) -> ImageSet:
    """ImageFolder order is by class; a production line is not."""
    return parts.subset(np.random.default_rng(seed).permutation(len(parts)))
