"""6. The loop over time: consecutive cycles over one long stream in which drift arrives in stages.

The stream is digits parts in stages (by default lighting, then blur, then noise, then clean
again, five cycles each). Every cycle sends a window of the stream through the champion (a
quarter audited, as in the CT cycle) and runs the pipeline once, as `ctloop serve`'s schedule
would. Per cycle it records:
- the cycle's wall time (kfp.local, each task forked from the warm forkserver);
- each stage's peak resident memory: the kernel's high-water mark (VmHWM) of the task's process,
  read every 0.05 s while it runs (what a task reaches in its last 0.05 s can be missed, and a
  task shorter than that, such as the monitor, can be missed entirely); a fork counts the
  forkserver's preloaded modules it touches, which it shares with the forkserver;
- the training set's size (consensus' `train_size`; none when the monitor did not retrain);
- the champion's accuracy on the stream's true labels, before and after the cycle, on parts of the
  same stage the cycle never saw (an evaluation sample drawn with another seed).

Goals (issue 12): cycle time and peak memory within 1.5x of the first cycle's, and accuracy after
each cycle never below the champion's before it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from bench.cycle import quiet
from bench.settings import BenchSettings
from ctloop.images import ImageSet
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.bootstrap import BootstrapResult
from ctloop_app.figures import champion_accuracies
from ctloop_app.local_run import run_cycle
from ctloop_app.stack import LocalStack
from ctloop_app.traffic import Traffic
from ctloop_app.warm_tasks import running_tasks

AUDIT_SHARE = 0.25
EVAL_PARTS = 300
SAMPLE_SECONDS = 0.05


class PeakMemory:
    """Peak RSS per pipeline task (Linux's VmHWM) of this process's running tasks while a run goes."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid, task in running_tasks().items():
                self.peaks[task] = max(self.peaks.get(task, 0), _high_water_mark(pid))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _high_water_mark(pid: int) -> int:
    """The process's peak resident set so far, in bytes (0 if it has gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_longrun(stack: LocalStack, boot: BootstrapResult, settings: BenchSettings, work: Path) -> dict[str, object]:
    """Run the stream's cycles against `stack`; the figures per cycle and against the goals."""
    config = settings.config.with_overrides(previous_per_class=settings.longrun_previous_per_class)
    pool = ImageSet.load(boot.production_pool)
    cycles = []
    for number, (kind, stage) in enumerate(_stages(settings), 1):
        drift = DriftSpec(kind, settings.severity, start=0) if kind else None
        window = ProductionLine(pool, settings.seed * 1000 + number, drift).take(config.recent_window)
        evaluation = ProductionLine(pool, settings.seed * 1000 + 500 + stage, drift).take(EVAL_PARTS)
        Traffic(stack.client, stack.store_dir, AUDIT_SHARE, number).send(window)
        before = stack.client.default_version("champion")
        with PeakMemory() as memory, quiet(work / f"cycle-{number}.log"):
            run = run_cycle(stack, config, boot.golden_set, work / "pipeline_root")
        after = stack.client.default_version("champion")
        scores = champion_accuracies(stack.tracking_uri, [before, after], evaluation)
        consensus = run.task("consensus-op")
        cycles.append({
            "cycle": number, "drift": kind or "clean", "succeeded": run.succeeded, "error": run.error,
            "retrained": consensus is not None, "champion": f"{before} -> {after}",
            "seconds": round(run.seconds, 2),
            "peak_mb": {task.removesuffix("_op"): round(peak / 2**20) for task, peak in sorted(memory.peaks.items())},
            "train_size": consensus.artifacts["metrics"]["metadata"].get("train_size") if consensus else None,
            "accuracy_before": round(scores[before], 4), "accuracy_after": round(scores[after], 4),
        })
    return {"stages": [[kind or "clean", count] for kind, count in settings.longrun_stages],
            "previous_per_class": config.previous_per_class, "cycles": cycles, "goals": _goals(cycles)}


def _stages(settings: BenchSettings) -> Iterator[tuple[str | None, int]]:
    """(drift kind, stage number) for every cycle of the stream."""
    for stage, (kind, count) in enumerate(settings.longrun_stages):
        for _ in range(count):
            yield kind, stage


def _goals(cycles: list[dict]) -> dict[str, object]:
    """The worst ratios to the first cycle, and whether any cycle left the champion worse."""
    first = cycles[0]
    peak = {cycle["cycle"]: max(cycle["peak_mb"].values(), default=0) for cycle in cycles}
    worse = [cycle["cycle"] for cycle in cycles if cycle["accuracy_after"] < cycle["accuracy_before"]]
    return {
        "max_seconds_over_first": round(max(cycle["seconds"] for cycle in cycles) / first["seconds"], 2),
        "max_peak_mb_over_first": round(max(peak.values()) / peak[first["cycle"]], 2) if peak[first["cycle"]] else None,
        "cycles_that_lowered_accuracy": worse,
        "all_succeeded": all(cycle["succeeded"] for cycle in cycles),
    }
