"""The main job: a production line drifts, ctloop notices, retrains and deploys a better model.

Bootstraps the three models on clean digits, starts TorchServe and MLflow, plays clean traffic
(the monitor stays quiet), injects drift (the monitor trips and the pipeline retrains and
deploys), plays more drifted traffic (yield recovers), and reports what happened. Then, unless
told not to, it shows the pass rate on a line with an OK class, the parts line
(ctloop_app.demo_parts): the share of parts classified OK, as the monitor measures it, before and
after that line drifts, and whether the monitor tripped.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ctloop_app.bootstrap import BootstrapFolderError, BootstrapResult, bootstrap_digits, load_bootstrap
from ctloop.config import PipelineConfig
from ctloop.drift import DriftKind
from ctloop.images import ImageSet
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.stack import LocalStack, install_models, local_stack
from ctloop_app.traffic import Answer, Traffic
from ctloop_app.figures import champion_accuracies
from ctloop_app.local_run import LocalRun, run_cycle
from ctloop_app.demo_parts import PartsLineSettings, PassRateSummary, run_parts_line


@dataclass(frozen=True)
class DemoSettings:
    work_dir: Path = Path("runs/demo")
    seed: int = 0
    drift_kind: DriftKind = "blur"
    drift_severity: float = 1.0
    audit_share: float = 0.25
    concurrency: int = 4
    config: PipelineConfig = field(default_factory=PipelineConfig)
    bootstrap_epochs: int | None = None
    mlflow_server: bool = True
    models: Path | None = None  # a `ctloop bootstrap` folder on the digits to start from; None trains one
    parts: PartsLineSettings | None = field(default_factory=PartsLineSettings)  # None: no pass-rate part


@dataclass
class PhaseSummary:
    name: str
    requests: int
    yield_value: float
    accuracy: float
    versions: list[str]


@dataclass
class DemoSummary:
    settings: dict[str, Any]
    phases: list[PhaseSummary]
    cycles: list[dict[str, Any]]
    champion_before: str
    champion_after: str
    old_champion_accuracy_on_drift: float
    new_champion_accuracy_on_drift: float
    pseudo_label_precision: float | None
    kept_share: float | None
    estimated_accuracy: float | None
    estimated_branch_accuracy: float | None
    timeline: list[tuple[int, float, str]]
    confusion_matrices: dict[str, dict[str, Any]]
    seconds: float
    pass_rate: PassRateSummary | None = None  # the parts line's pass rate; None when it did not run


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> DemoSummary:
    """Run the whole story in `settings.work_dir` (emptied first); servers stop on exit."""
    started = time.monotonic()
    work = settings.work_dir.resolve()
    if settings.models is not None and settings.models.resolve().is_relative_to(work):
        raise BootstrapFolderError(f"{settings.models}: the demo empties its work directory {work} first; "
                         "keep the models outside it (e.g. runs/bootstrap)")
    shutil.rmtree(work, ignore_errors=True)
    if settings.models is None:
        say(f"bootstrapping champion, B1 and B2 on clean digits in {work}")
        boot = bootstrap_digits(work / "bootstrap", settings.seed, settings.bootstrap_epochs)
    else:
        say(f"starting from the models bootstrapped in {settings.models}")
        boot = load_bootstrap(settings.models)
    say("golden-set accuracy: " + ", ".join(f"{role} {score:.3f}" for role, score in boot.golden_accuracy.items()))
    with local_stack(work / "stack", settings.mlflow_server) as stack:
        say(f"TorchServe at {stack.torchserve.inference_url}, MLflow at {stack.tracking_uri}")
        first_version = install_models(stack, boot.model_files, boot.train_set)
        story = _Story(settings, stack, boot, work / "pipeline_root", say)
        story.play("clean")
        story.cycle()
        story.play(f"{settings.drift_kind} drift")
        story.cycle()
        final_version = stack.client.default_version("champion")
        last_parts = story.play("after retraining" if final_version != first_version else "drift, not retrained")
        scores = champion_accuracies(stack.tracking_uri, [first_version, final_version], last_parts)
    pass_rate = None
    if settings.parts is not None:
        pass_rate = run_parts_line(work / "parts", settings.parts, settings.config, settings.seed,
                                   settings.audit_share, settings.concurrency, say)
    monitor = story.cycles[-1]["outputs"].get("monitor-op", {})
    consensus = story.cycles[-1]["outputs"].get("consensus-op", {})
    return DemoSummary(
        settings={"seed": settings.seed, "drift_kind": settings.drift_kind, "drift_severity": settings.drift_severity,
                  "audit_share": settings.audit_share, **settings.config.as_dict(),
                  "parts_line": dataclasses.asdict(settings.parts) if settings.parts is not None else None},
        phases=story.phases,
        cycles=story.cycles,
        champion_before=first_version,
        champion_after=final_version,
        old_champion_accuracy_on_drift=scores[first_version],
        new_champion_accuracy_on_drift=scores[final_version],
        pseudo_label_precision=consensus.get("pseudo_label_precision"),
        kept_share=consensus.get("kept_share"),
        estimated_accuracy=monitor.get("estimated_accuracy"),
        estimated_branch_accuracy=consensus.get("estimated_branch_accuracy"),
        timeline=story.timeline,
        confusion_matrices=story.cycles[-1]["confusion_matrices"],
        seconds=time.monotonic() - started,
        pass_rate=pass_rate,
    )


class _Story:
    """The line (drift starts after the first window), its traffic, and what each step showed."""

    def __init__(self, settings: DemoSettings, stack: LocalStack, boot: BootstrapResult, pipeline_root: Path,
                 say: Callable[[str], None]) -> None:
        self.config, self.stack, self.boot, self.pipeline_root, self.say = (
            settings.config, stack, boot, pipeline_root, say)
        if boot.production_pool is None:
            raise ValueError("the demo plays the simulator's production pool; bootstrap with bootstrap_digits")
        self.line = ProductionLine(ImageSet.load(boot.production_pool), settings.seed,
                                   DriftSpec(settings.drift_kind, settings.drift_severity,
                                             start=settings.config.recent_window))
        self.traffic = Traffic(stack.client, stack.store_dir, settings.audit_share, settings.seed,
                               settings.concurrency)
        self.phases: list[PhaseSummary] = []
        self.timeline: list[tuple[int, float, str]] = []
        self.cycles: list[dict[str, Any]] = []

    def play(self, name: str) -> ImageSet:
        """One window of parts through the champion; returns the parts (with their true labels)."""
        parts = self.line.take(self.config.recent_window)
        answers = self.traffic.send(parts)
        self.timeline.extend((answer.position, answer.confidence, name) for answer in answers)
        self.phases.append(_phase(name, answers, self.config.yield_confidence))
        self.say(f"{name}: {len(answers)} parts, yield {self.phases[-1].yield_value:.3f}, "
                 f"accuracy {self.phases[-1].accuracy:.3f}")
        return parts

    def cycle(self) -> None:
        """One run of the continuous-training pipeline."""
        self.say("running the continuous-training pipeline (kfp.local)")
        run = run_cycle(self.stack, self.config, self.boot.golden_set, self.pipeline_root)
        self.say(f"pipeline {'succeeded' if run.succeeded else 'FAILED: ' + str(run.error)}; "
                 f"stages: {', '.join(run.tasks)}")
        self.cycles.append(_cycle_summary(run))


def _phase(name: str, answers: list[Answer], confidence: float) -> PhaseSummary:
    confidences = np.array([answer.confidence for answer in answers])
    correct = np.array([answer.label == answer.true_label for answer in answers])
    return PhaseSummary(name, len(answers), float((confidences >= confidence).mean()), float(correct.mean()),
                        sorted({answer.model_version for answer in answers}))


def _cycle_summary(run: LocalRun) -> dict[str, Any]:
    outputs: dict[str, dict[str, Any]] = {}
    matrices: dict[str, dict[str, Any]] = {}
    for name, task in run.tasks.items():
        merged = dict(task.parameters)
        for artifact_name, artifact in task.artifacts.items():
            metadata = artifact["metadata"]
            if "confusionMatrix" in metadata:
                matrices[artifact_name] = metadata["confusionMatrix"]
            elif artifact_name == "metrics":
                merged.update(metadata)
        outputs[name] = merged
    return {
        "succeeded": run.succeeded,
        "error": run.error,
        "seconds": run.seconds,
        "stages": list(run.tasks),
        "stage_seconds": {name: task.seconds for name, task in run.tasks.items()},
        "outputs": outputs,
        "confusion_matrices": matrices,
    }
