"""What a deploy reports, on one machine (components.deploy.logic) or on a cluster
(components.deploy.cluster)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEPLOYED", "SUPERSEDED", "DeployFailedError", "DeployOutcome"]

DEPLOYED = "deployed"
SUPERSEDED = "superseded"


class DeployFailedError(RuntimeError):
    """The new version was not deployed; the `champion` alias still names the previous champion."""


@dataclass(frozen=True)
class DeployOutcome:
    """What a successful deploy did.

    Attributes:
        new_version: the version now serving as the default (and MLflow's `champion`), or, when
            superseded, the version that was not deployed.
        old_version: the TorchServe default before the deploy; None if none served. When
            superseded: the champion that replaced the one this run compared against.
        previous_champion: the version MLflow's `previous-champion` alias now names; None if
            there was no champion before.
        canary_accuracy: accuracy of the new version on the canary images.
        steps: serving's deploy steps, each {"name", "seconds", "ok", "detail"}.
        removed_versions: older TorchServe versions unregistered to keep `keep_versions`.
        status: "deployed", or "superseded" (another run deployed first; nothing changed).
        repairs: what the repair before the deploy found and did (components.deploy.reconcile).
    """

    new_version: str
    old_version: str | None
    previous_champion: str | None
    canary_accuracy: float | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    removed_versions: list[str] = field(default_factory=list)
    status: str = DEPLOYED
    repairs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Seconds per deploy step (`<step>_seconds`) and the canary accuracy when known."""
        figures = {f"{step['name']}_seconds": float(step["seconds"]) for step in self.steps}
        if self.canary_accuracy is not None:
            figures["canary_accuracy"] = self.canary_accuracy
        return figures

    def summary(self) -> dict[str, float | str]:
        """The deploy in three figures, for Prometheus (ctloop.pushmetrics): `deploy_seconds`, the
        steps' total; `deployed`, 1.0, or 0.0 when superseded; `serving_version`, the version now
        serving as the default (the new one, or the one that superseded it)."""
        serving = self.new_version if self.status == DEPLOYED else (self.old_version or "")
        return {"deploy_seconds": float(sum(step["seconds"] for step in self.steps)),
                "deployed": float(self.status == DEPLOYED), "serving_version": serving}

    def outputs(self) -> dict[str, str]:
        """The stage's outputs by name; old_version is "" when nothing served before (a kfp
        output cannot be None)."""
        return {"old_version": self.old_version or "", "new_version": self.new_version, "status": self.status}
