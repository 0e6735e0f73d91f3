"""2. Consensus filter: samples/s through B1 and B2 on TorchServe (what the consensus stage does:
`ask_branch` with .npy batches of `consensus_batch_size`) vs in-process B1 and B2 forwards of the
same batches. A sample counts once it has both branches' answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.timing import best_of, ratio, torch_threads
from components.consensus.logic import ask_branch
from ctloop.modelfile import load_model, predict_proba
from serving.client import TorchServeClient

BRANCHES = ("b1", "b2")


def bench_consensus(client: TorchServeClient, model_files: dict[str, Path], images: np.ndarray, batch_size: int,
                    repeats: int) -> dict[str, object]:
    """Best of `repeats` runs each way; also checks that both ways give the same labels."""
    served_seconds, served = best_of(repeats, lambda: [ask_branch(client, name, images, batch_size).labels
                                                       for name in BRANCHES])
    models = {name: load_model(model_files[name])[0] for name in BRANCHES}
    with torch_threads(1):
        local_seconds, local = best_of(repeats, lambda: [predict_proba(models[name], images, batch_size).argmax(axis=1)
                                                         for name in BRANCHES])
    served_rate, local_rate = len(images) / served_seconds, len(images) / local_seconds
    return {
        "samples": len(images),
        "batch_size": batch_size,
        "branch_workers": {name: len(client.describe(name)[0]["workers"]) for name in BRANCHES},
        "torchserve": {"seconds": round(served_seconds, 3), "samples_per_second": round(served_rate, 1)},
        "in_process": {"seconds": round(local_seconds, 3), "samples_per_second": round(local_rate, 1)},
        "torchserve_over_in_process": ratio(served_rate, local_rate),
        "labels_identical": all(np.array_equal(a, b) for a, b in zip(served, local)),
    }
