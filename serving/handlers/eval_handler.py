"""Eval: a candidate model answered in the runtime it will be served in.

One .npy batch in, labels and full class probabilities out, so the caller can compare them with
in-process predictions of the same model file; nothing is logged.
"""

from __future__ import annotations

from ctloop_handler_base import CtloopHandler, Outcome


class EvalHandler(CtloopHandler):
    def respond(self, idx: int, outcome: Outcome) -> object:
        return {
            "labels": outcome.probabilities.argmax(axis=1).tolist(),
            "probabilities": outcome.probabilities.tolist(),
        }
