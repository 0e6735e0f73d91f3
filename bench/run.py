"""`make bench`: every benchmark in one run on this machine, into a results file and a table.

    python -m bench                     # the full run: bench/results.json, about 17-23 minutes
    python -m bench --tiny --out X.json # the test suite's run: a few requests, one drift kind

Order matters: the CT cycle runs first on the fresh stack, because its monitor reads the
champion's prediction log, which the serving benchmark would otherwise fill with clean traffic.
The learning and input-drift benchmarks run after the servers have stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from bench.consensus import bench_consensus
from bench.cycle import bench_cycle
from bench.deploy_load import bench_deploy
from bench.input_drift import bench_input_drift
from bench.learning import bench_learning
from bench.load import npy_bodies
from bench.longrun import bench_longrun
from bench.machine import describe_machine, load_average
from bench.report import markdown
from bench.serving import bench_serving
from bench.settings import FULL, TINY, BenchSettings
from bench.timing import torch_threads
from ctloop_app.bootstrap import bootstrap_digits, bootstrap_split
from ctloop.images import ImageSet, write_atomic
from ctloop.parts import parts_split
from ctloop.simulator import DriftSpec, ProductionLine
from ctloop_app.stack import install_models, local_stack

DEFAULT_OUT = Path(__file__).with_name("results.json")
DEFAULT_WORK = Path("runs/bench")
REQUEST_POOL = 64  # distinct one-image request bodies, sent round-robin

T = TypeVar("T")


def run_bench(settings: BenchSettings, name: str, work: Path, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run every benchmark in `work` (emptied first) and return the results."""
    started = time.monotonic()
    work = work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    results: dict[str, object] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"name": name, **asdict(settings)},
        "machine": describe_machine(),
    }
    loads: dict[str, float] = {}
    results["load_average"] = loads

    def section(key: str, action: Callable[[], T]) -> T:
        say(f"bench: {key} ...")
        loads[key] = load_average()
        began = time.monotonic()
        value = action()
        say(f"bench: {key} done in {time.monotonic() - began:.1f} s")
        return value

    boot = section("bootstrap", lambda: _one_thread(lambda: bootstrap_digits(
        work / "bootstrap", settings.seed, settings.bootstrap_epochs, progress=False)))
    golden = ImageSet.load(boot.golden_set)
    bodies = npy_bodies(golden.images[:REQUEST_POOL])
    with local_stack(work / "stack", settings.mlflow_server) as stack:
        section("install", lambda: install_models(stack, boot.model_files, boot.train_set))
        results["cycle"] = section("cycle", lambda: bench_cycle(stack, boot, settings, work / "cycle"))
        results["serving"] = section("serving", lambda: bench_serving(stack, boot.model_files["champion"], bodies,
                                                                      settings, work / "serving"))
        drifted = _drifted_parts(boot.production_pool, settings)
        results["consensus"] = section("consensus", lambda: bench_consensus(
            stack.client, boot.model_files, drifted, settings.config.consensus_batch_size, settings.consensus_repeats))
        results["deploy"] = section("deploy", lambda: bench_deploy(
            stack, boot.model_files["champion"], boot.train_set, boot.golden_set, bodies, settings.deploy_concurrency,
            work / "deploy", settings.deploy_swaps))
    with local_stack(work / "longrun-stack", settings.mlflow_server) as stack:
        section("install longrun", lambda: install_models(stack, boot.model_files, boot.train_set))
        results["longrun"] = section("longrun", lambda: bench_longrun(stack, boot, settings, work / "longrun"))
    results["learning"] = {"digits": section("learning digits", lambda: _one_thread(lambda: bench_learning(boot, settings)))}
    results["input_drift"] = {"digits": section("input drift digits", lambda: _one_thread(
        lambda: bench_input_drift(boot, settings)))}
    if "parts" in settings.lines:
        parts = section("bootstrap parts", lambda: _one_thread(lambda: bootstrap_split(
            parts_split(settings.seed, settings.parts_image_size, settings.parts_per_class), work / "parts",
            settings.bootstrap_epochs, progress=False, config=settings.config)))
        results["learning"]["parts"] = section("learning parts", lambda: _one_thread(
            lambda: bench_learning(parts, settings)))
        with local_stack(work / "parts-stack", settings.mlflow_server) as stack:
            section("install parts", lambda: install_models(stack, parts.model_files, parts.train_set))
            results["cycle_parts"] = section("cycle parts", lambda: bench_cycle(
                stack, parts, replace(settings, cycle_drift=settings.parts_cycle_drift), work / "cycle-parts"))
    loads["end"] = load_average()
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def _one_thread(action: Callable[[], T]) -> T:
    """Train with one torch thread: on 2 cores shared with servers and other jobs, two intra-op
    threads trained the champion 4x slower here (they wait for each other at every operation).
    The pipeline's own train stage keeps torch's default, as in production."""
    with torch_threads(1):
        return action()


def _drifted_parts(production_pool: Path, settings: BenchSettings) -> np.ndarray:
    line = ProductionLine(ImageSet.load(production_pool), settings.seed,
                          DriftSpec(settings.cycle_drift, settings.severity, start=0))
    return line.take(settings.consensus_samples).images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few requests, one drift kind, five epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help=f"scratch (default {DEFAULT_WORK})")
    args = parser.parse_args(argv)
    settings, name = (TINY, "tiny") if args.tiny else (FULL, "full")
    # Progress, and what MLflow prints about its runs, go to stderr: stdout is the table alone.
    with contextlib.redirect_stdout(sys.stderr):
        results = run_bench(settings, name, args.work_dir)
    write_atomic(args.out, (json.dumps(results, indent=2) + "\n").encode())
    print(markdown(results))
    print(f"results: {args.out}", file=sys.stderr)
    return 0
