"""Accuracy without labels: Average Thresholded Confidence (ATC; Garg et al., ICLR 2022).

On labelled data a model's accuracy is known; ATC picks the confidence threshold above which
the same share of that data lies. On a window without labels, the share of predictions above it
estimates the accuracy there. numpy only: the monitor, which has no torch, applies it to the
confidences in the prediction log, and the threshold travels in the model card (ctloop.modelfile)
and from there in every prediction record.

ATC assumes confidence still ranks the answers on the new data; a champion that is confidently
wrong (as on heavy sensor noise) fools it as it fools the confidence yield.
"""

from __future__ import annotations

import numpy as np


def atc_threshold(confidences: np.ndarray, correct: np.ndarray) -> float:
    """The threshold t for which the share of `confidences` above t equals the accuracy
    (the mean of `correct`) on the same labelled data."""
    confidences, correct = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=bool)
    if len(confidences) == 0 or confidences.shape != correct.shape:
        raise ValueError(f"need as many confidences as answers, and at least one; got {confidences.shape} "
                         f"and {correct.shape}")
    below = int(round(len(confidences) * (1.0 - correct.mean())))
    return float(np.sort(confidences)[below - 1]) if below else -1.0


def atc_estimate(confidences: np.ndarray, threshold: float) -> float:
    """The estimated accuracy on unlabelled answers: the share with confidence above `threshold`."""
    confidences = np.asarray(confidences, dtype=np.float64)
    return float((confidences > threshold).mean()) if len(confidences) else 0.0
