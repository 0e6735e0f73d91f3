"""Compile the pipeline to the YAML that Kubeflow Pipelines runs, and load it back to check it."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from ctloop.config import PipelineConfig
from kubeflow_pipeline.images import ImageSettings
from kubeflow_pipeline.pipeline import build_pipeline


def compile_pipeline(out: str | Path, config: PipelineConfig | None = None,
                     images: ImageSettings | None = None, cluster: bool = False) -> Path:
    """Write the compiled pipeline spec to `out`; `cluster` adds the Kubernetes settings
    (volumes, secrets as env) of kubeflow_pipeline.kubernetes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, images, cluster=cluster), str(out))
    return out


def stage_images(spec_path: str | Path) -> dict[str, str]:
    """Executor name -> container image, read from a compiled spec."""
    spec = yaml.safe_load(Path(spec_path).read_text())
    executors = spec["deploymentSpec"]["executors"]
    return {name: executor["container"]["image"] for name, executor in executors.items() if "container" in executor}
