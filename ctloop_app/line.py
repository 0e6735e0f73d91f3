"""One continuous-training cycle on a user's own production images (`ctloop run`).

The bootstrapped models are served, the production ImageFolder is played through the champion
(a quarter of the parts, chosen at random, report their folder's label as audit feedback), and
the pipeline runs once: it retrains and deploys only if the monitor and the analysis say so.
What a user judges the cycle by is printed and written to `<work_dir>/run_summary.json`: the old
and the new champion's accuracy on every production part (its sub-folder is its label), the
monitor's reason, the consensus' kept share and pseudo-label precision, and analyze's decision
with its reasons.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctloop.config import PipelineConfig
from ctloop.imagefolder import read_image_folder
from ctloop.images import ImageSet, write_atomic
from ctloop.modelfile import load_model
from ctloop.models import ROLES
from ctloop_app.stack import install_models, local_stack
from ctloop_app.traffic import Traffic
from ctloop_app.figures import champion_accuracies, cycle_figures, optional_figure
from ctloop_app.local_run import run_cycle


@dataclass(frozen=True)
class LineResult:
    succeeded: bool
    parts: int
    champion_before: str
    champion_after: str
    stages: tuple[str, ...]
    error: str | None
    old_champion_accuracy: float
    new_champion_accuracy: float
    figures: dict[str, Any]

    def __str__(self) -> str:
        outcome = "succeeded" if self.succeeded else f"FAILED: {self.error}"
        lines = [f"pipeline {outcome}; {self.parts} parts played; champion v{self.champion_before} -> "
                 f"v{self.champion_after}; stages: {', '.join(self.stages)}",
                 f"accuracy on the production parts (folder labels): champion v{self.champion_before} "
                 f"{self.old_champion_accuracy:.3f}, v{self.champion_after} {self.new_champion_accuracy:.3f}"]
        if "monitor" in self.figures:
            lines.append(f"monitor: {self.figures['monitor']}")
        if "drift" in self.figures:
            lines.append(f"drift: {self.figures['drift']}; retrain on: {' and '.join(self.figures['signals']) or '-'}")
        if "kept_share" in self.figures:
            figures = self.figures
            lines.append(f"consensus kept {figures['kept_share']:.3f} of the window; pseudo-label precision "
                         f"on audited parts {optional_figure(figures['pseudo_label_precision'])}; B1/B2 accuracy "
                         f"estimated {optional_figure(figures['estimated_branch_accuracy'])}, audited "
                         f"{optional_figure(figures['branch_audited_accuracy'])}")
        lines += [f"analyze: {reason}" for reason in self.figures.get("reasons", [])]
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        write_atomic(path, (json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode())


def run_on_folder(models: Path, production_folder: Path, work_dir: Path, config: PipelineConfig,
                  audit_share: float = 0.25, mlflow_server: bool = True) -> LineResult:
    """Serve `models` (a `ctloop bootstrap` folder), play `production_folder`, run one cycle;
    the result is also written to `work_dir/run_summary.json`."""
    files = {role: models / "models" / f"{role}.pt" for role in ROLES}
    _, card = load_model(files["champion"])
    parts = read_image_folder(production_folder, card.image_size, card.class_names)
    config = config.with_overrides(recent_window=min(config.recent_window, len(parts)))
    with local_stack(work_dir, mlflow_server) as stack:
        before = install_models(stack, files, models / "data" / "train.npz")
        Traffic(stack.client, stack.store_dir, audit_share, config.seed).send(_shuffled(parts, config.seed))
        run = run_cycle(stack, config, models / "data" / "golden.npz", work_dir / "pipeline_root")
        after = stack.client.default_version("champion")
        scores = champion_accuracies(stack.tracking_uri, [before, after], parts)
    result = LineResult(run.succeeded, len(parts), before, after, tuple(run.tasks), run.error, scores[before],
                        scores[after], cycle_figures(run))
    result.write_json(work_dir / "run_summary.json")
    return result


def _shuffled(parts: ImageSet, seed: int) -> ImageSet:
    """ImageFolder order is by class; a production line is not."""
    return parts.subset(np.random.default_rng(seed).permutation(len(parts)))
