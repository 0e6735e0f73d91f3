"""Branch (B1 and B2): one .npy batch in, labels and confidences of the whole batch out.

Used by the consensus filter, so many images travel in one request; nothing is logged.
"""

from __future__ import annotations

from ctloop_handler_base import CtloopHandler, Outcome


class BranchHandler(CtloopHandler):
    def respond(self, idx: int, outcome: Outcome) -> object:
        return {
            "labels": outcome.probabilities.argmax(axis=1).tolist(),
            "confidences": outcome.probabilities.max(axis=1).tolist(),
        }
