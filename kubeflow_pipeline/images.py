"""The one place that names the container image of every pipeline stage.

Each stage runs in its own image (built from `components/Dockerfile` with the STAGE build argument;
`make images` builds them all and the serving image), so the compiled
pipeline must name the image for the registry and tag it was built for. Nothing uses `:latest`:
the tag defaults to the package version and CI passes the commit SHA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ctloop import __version__

STAGES: tuple[str, ...] = (
    "monitor",
    "drift",
    "collect",
    "validate",
    "consensus",
    "train",
    "analyze",
    "deploy",
    "notify",
)
DEFAULT_REGISTRY = "ghcr.io/ctloop"


@dataclass(frozen=True)
class ImageSettings:
    registry: str = DEFAULT_REGISTRY
    tag: str = __version__

    def __post_init__(self) -> None:
        if not self.tag or self.tag == "latest":
            raise ValueError(f"image tag must name a version or commit, got {self.tag!r}")

    def image(self, stage: str) -> str:
        """The image of `stage`, e.g. ghcr.io/ctloop/ctloop-train:0.1.0."""
        if stage not in STAGES and stage != "serving":
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        return f"{self.registry.rstrip('/')}/ctloop-{stage}:{self.tag}"

    @classmethod
    def from_env(cls) -> "ImageSettings":
        """CTLOOP_IMAGE_REGISTRY and CTLOOP_IMAGE_TAG, as CI sets them."""
        return cls(
            registry=os.environ.get("CTLOOP_IMAGE_REGISTRY", DEFAULT_REGISTRY),
            tag=os.environ.get("CTLOOP_IMAGE_TAG", __version__),
        )
