"""How much each benchmark does: the full run of `make bench`, and a tiny one for the test suite."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctloop.config import PipelineConfig
from ctloop.drift import DRIFT_KINDS, DriftKind


@dataclass(frozen=True)
class TorchServeSettings:
    """One TorchServe configuration of the champion tried while tuning.

    Attributes:
        workers: worker processes of the model.
        torch_threads: intra-op threads per worker (the handler's torch.set_num_threads).
        batch_size: TorchServe's server-side batch (requests per forward).
        max_batch_delay_ms: how long TorchServe waits to fill a batch.
    """

    workers: int = 1
    torch_threads: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 0

    @property
    def name(self) -> str:
        """A TorchServe model name for this configuration, e.g. `bench-w2-t1-b8-d2`."""
        return f"bench-w{self.workers}-t{self.torch_threads}-b{self.batch_size}-d{self.max_batch_delay_ms}"


FULL_CANDIDATES = (
    TorchServeSettings(1, 1, 1, 0),
    TorchServeSettings(2, 1, 1, 0),
    TorchServeSettings(1, 2, 1, 0),
    TorchServeSettings(1, 1, 8, 2),
    TorchServeSettings(2, 1, 4, 2),
)


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of every benchmark.

    Attributes:
        seed: seeds the data split, the production lines and training.
        bootstrap_epochs: epochs of the bootstrapped models; None uses each role's recipe.
        candidates: TorchServe configurations tried; the best at concurrency 8 is the winner.
        concurrencies: client threads of the serving load.
        requests: timed requests per serving measurement (after `warmup` untimed ones).
        warmup: untimed requests before each serving measurement.
        consensus_samples: drifted images sent through B1 and B2.
        consensus_repeats: how often the consensus measurement is repeated (best run counts).
        config: the pipeline's parameters for the CT cycle and the learning benchmark.
        cycle_drift: drift kind that trips the monitor in the CT cycle.
        drift_kinds: drift kinds of the learning benchmark.
        lines: the simulated lines of the learning benchmark (digits, parts).
        parts_image_size: pixels a side of the parts line.
        parts_per_class: images per class of the parts line (split 50/20/30).
        parts_cycle_drift: drift kind that trips the monitor in the parts line's CT cycle.
        severity: drift severity of the cycle and the learning benchmark.
        deploy_concurrency: client threads sending requests during the deploys.
        deploy_swaps: deploys in a row under that load.
        mlflow_server: MLflow as a tracking server (as in `make run`) rather than its SQLite file.
        longrun_stages: the loop over time: (drift kind or None for clean, cycles) in stream order.
        longrun_previous_per_class: its training sets' cap per class (config previous_per_class): 150
            keeps the digits' training sets within about 1.3x of the first cycle's (90 bootstrap rows
            per class, and each retrain adds up to 3 x 300 pseudo-labelled rows).
        drift_severities: severities of the input-drift benchmark (the demo's first).
        drift_check_every: parts between two monitoring runs there (a divisor of recent_window).
        drift_streams: seeded streams per drift kind (and severity) there.
        drift_clean_checks: checks of each stream on clean windows before its drift starts.
    """

    seed: int = 0
    bootstrap_epochs: int | None = None
    candidates: tuple[TorchServeSettings, ...] = FULL_CANDIDATES
    concurrencies: tuple[int, ...] = (1, 8)
    requests: int = 3000
    warmup: int = 200
    consensus_samples: int = 3000
    consensus_repeats: int = 3
    config: PipelineConfig = field(default_factory=PipelineConfig)
    cycle_drift: DriftKind = "blur"
    drift_kinds: tuple[DriftKind, ...] = DRIFT_KINDS
    lines: tuple[str, ...] = ("digits", "parts")
    parts_image_size: int = 32
    parts_per_class: int = 600
    parts_cycle_drift: DriftKind = "lighting"
    severity: float = 1.0
    deploy_concurrency: int = 4
    deploy_swaps: int = 3
    mlflow_server: bool = True
    longrun_stages: tuple[tuple[DriftKind | None, int], ...] = (("lighting", 5), ("blur", 5), ("noise", 5), (None, 5))
    longrun_previous_per_class: int = 150
    drift_severities: tuple[float, ...] = (1.0, 0.5)
    drift_check_every: int = 50
    drift_streams: int = 12
    drift_clean_checks: int = 6


FULL = BenchSettings()

# About two minutes: one TorchServe configuration, a few requests, one drift kind, a short window
# and five-epoch models (B1 and B2 see drift in most batches; after two epochs they agreed on 2 of
# 60 parts). Such branch models are rarely 70 % sure, so every agreement counts and the analyze
# thresholds are relaxed, the evidence rule switched off (a 60-part window holds out a handful of
# samples) and the pseudo-label precision gate too (it would judge the five-epoch branches): the
# digits cycle always deploys, and every section has figures.
TINY = BenchSettings(
    bootstrap_epochs=5,
    candidates=(TorchServeSettings(1, 1, 1, 0),),
    requests=40,
    warmup=8,
    consensus_samples=256,
    consensus_repeats=1,
    config=PipelineConfig(recent_window=60, min_samples=20, train_epochs=2, confidence_threshold=0.0,
                          min_improvement=-1.0, max_golden_regression=1.0, min_holdout_per_class=0,
                          evidence_level=1.0, min_pseudo_label_precision=0.0),
    drift_kinds=("blur",),
    parts_per_class=40,
    deploy_concurrency=2,
    deploy_swaps=1,
    mlflow_server=False,
    longrun_stages=(("blur", 1), (None, 1)),
    drift_severities=(1.0,),
    drift_check_every=20,
    drift_streams=2,
    drift_clean_checks=3,
)
