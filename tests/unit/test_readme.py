"""The README's cluster instructions: what they install must be able to run this pipeline."""

from __future__ import annotations

import re

from cicd_support import ROOT

# The exit handler's task takes dsl.PipelineTaskFinalStatus, which the KFP backend runs from 2.14.
MIN_KFP_BACKEND = (2, 14)
KFP_MANIFESTS = re.compile(r"github\.com/kubeflow/pipelines/manifests/kustomize/[\w/-]+\?ref=([\w.-]+)")


def test_readme_installs_a_kfp_backend_that_runs_the_pipeline() -> None:
    refs = KFP_MANIFESTS.findall((ROOT / "README.md").read_text())
    assert len(refs) >= 2, "the README installs KFP's cluster-scoped resources and an env"
    for ref in refs:
        version = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", ref)
        assert version, f"KFP manifests ref {ref!r} is not a release version"
        assert tuple(map(int, version.groups()[:2])) >= MIN_KFP_BACKEND, \
            f"KFP {ref} rejects PipelineTaskFinalStatus; use 2.14 or newer"
    assert len(set(refs)) == 1, f"one KFP version for every manifest: {sorted(set(refs))}"
