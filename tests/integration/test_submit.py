"""`ctloop submit` against a local server answering the KFP v2beta1 routes kfp.Client calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from ctloop_app.cli import main
from kfp_support import TOKEN, FakeKfp, serve_fake_kfp
from kubeflow_pipeline import submit as kfp_submit
from kubeflow_pipeline.images import ImageSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(params=[False], ids=["single-user"])
def kfp_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeKfp]]:
    with serve_fake_kfp(multi_user=request.param) as served:
        yield served


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    return kfp_submit.compile_for_cluster(out, ImageSettings("ghcr.io/acme", COMMIT))


def params() -> dict:
    return kfp_submit.load_params(None, ["train_epochs=3"])


def test_first_submit_creates_pipeline_version_run_and_schedule(kfp_server, package: Path) -> None:
    host, fake = kfp_server
    client = kfp_submit.connect(host, TOKEN)
    done = kfp_submit.submit(client, package, COMMIT, params(), ui_url=host, schedule="0 30 6 * * *")

    assert fake.bodies("POST", "pipelines") == [{
        "display_name": "ctloop-continuous-training",
        "description": "Continuous training: monitor yield, retrain on consensus pseudo-labels, deploy."}]
    upload = fake.uploads[0]
    assert upload["query"]["name"] == [COMMIT] and upload["query"]["pipelineid"] == [done.pipeline_id]
    executors = upload["spec"]["deploymentSpec"]["executors"].values()
    images = {e["container"]["image"] for e in executors if "container" in e}
    assert images == {ImageSettings("ghcr.io/acme", COMMIT).image(s) for s in
                      ("monitor", "drift", "collect", "validate", "consensus", "train", "analyze", "deploy", "notify")}

    [run] = fake.bodies("POST", "runs")
    assert run["pipeline_version_reference"] == {"pipeline_id": done.pipeline_id,
                                                 "pipeline_version_id": done.pipeline_version_id}
    assert run["experiment_id"] == "experiment-1" and run["service_account"] == "ctloop-pipeline"
    run_params = run["runtime_config"]["parameters"]
    assert run_params["store_dir"] == "/mnt/ctloop/store" and run_params["train_epochs"] == 3
    assert run_params["ts_management_url"] == "http://torchserve:8081"
    assert done.run_url == f"{host}/#/runs/details/{done.run_id}"

    [recurring] = fake.bodies("POST", "recurringruns")
    assert recurring["display_name"] == "ctloop-yield-check"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 30 6 * * *"}}
    assert recurring["mode"] == "ENABLE" and int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"]
    assert recurring["pipeline_version_reference"] == run["pipeline_version_reference"]
    assert recurring["runtime_config"]["parameters"] == run_params
    assert done.replaced_recurring_runs == []


def test_next_commit_adds_a_version_and_replaces_the_schedule(kfp_server, package: Path) -> None:
    host, fake = kfp_server
    client = kfp_submit.connect(host, TOKEN)
    first = kfp_submit.submit(client, package, "a" * 40, params(), ui_url=host)
    second = kfp_submit.submit(client, package, "b" * 40, params(), ui_url=host)

    assert len(fake.bodies("POST", "pipelines")) == 1, "the pipeline is created once"
    assert second.pipeline_id == first.pipeline_id
    assert [u["query"]["name"][0] for u in fake.uploads] == ["a" * 40, "b" * 40]
    assert second.replaced_recurring_runs == [first.recurring_run_id]
    assert list(fake.recurring) == [second.recurring_run_id]
    assert fake.bodies("DELETE", f"recurringruns/{first.recurring_run_id}") == [None]


@pytest.mark.parametrize("kfp_server", [True], ids=["multi-user"], indirect=True)
def test_multi_user_next_commit_finds_the_pipeline_in_its_namespace(kfp_server, package: Path) -> None:
    host, fake = kfp_server
    client = kfp_submit.connect(host, TOKEN, "ctloop")
    first = kfp_submit.submit(client, package, "a" * 40, params(), ui_url=host, namespace="ctloop")
    second = kfp_submit.submit(client, package, "b" * 40, params(), ui_url=host, namespace="ctloop")

    assert [body["namespace"] for body in fake.bodies("POST", "pipelines")] == ["ctloop"], "created once"
    assert second.pipeline_id == first.pipeline_id
    lookups = [query for m, p, query, _ in fake.requests if m == "GET" and p == "/apis/v2beta1/pipelines"]
    assert lookups and all(query["namespace"] == ["ctloop"] for query in lookups)
    assert [u["query"]["pipelineid"][0] for u in fake.uploads] == [first.pipeline_id] * 2
    # The fake scopes by namespace: without one, the profile's pipeline is not listed.
    assert kfp_submit.find_pipeline_id(client, "ctloop-continuous-training") is None


def test_cli_submit_end_to_end(kfp_server, tmp_path: Path, monkeypatch, capsys) -> None:
    host, fake = kfp_server
    monkeypatch.setenv("KFP_HOST", host)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    out = tmp_path / "submission.json"
    code = main(["submit", "--commit", COMMIT, "--registry", "ghcr.io/acme", "--package", str(tmp_path / "p.yaml"),
                 "--output-json", str(out)])
    assert code == 0
    submission = json.loads(out.read_text())
    assert submission["pipeline_version_name"] == COMMIT
    assert f"run: {host}/#/runs/details/" in capsys.readouterr().out
    spec = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    assert "platforms" in list(spec)[1], "submit compiles for the cluster"


def test_wrong_token_is_reported_as_a_server_failure(kfp_server, tmp_path: Path, monkeypatch, capsys) -> None:
    host, _ = kfp_server
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    # With a namespace kfp.Client skips its health probe (five tries, 5 s apart) and calls the API.
    code = main(["submit", "--host", host, "--commit", COMMIT, "--namespace", "ctloop",
                 "--package", str(tmp_path / "p.yaml")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {host} failed: (401)" in err and "Unauthorized" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--schedule", "0 * * * *"], "has 5 fields; Kubeflow Pipelines expects 6"),
    (["--param", "yield_treshold=0.5"], "unknown pipeline parameters: yield_treshold"),
    (["--param", "store_dir"], "--param expects KEY=VALUE, got 'store_dir'"),
])
def test_user_mistakes_are_clear_errors(kfp_server, tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    host, fake = kfp_server
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    code = main(["submit", "--host", host, "--commit", COMMIT, "--package", str(tmp_path / "p.yaml"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not fake.uploads


def test_missing_required_parameters_are_named(package: Path) -> None:
    with pytest.raises(kfp_submit.SubmitError, match="missing pipeline parameters: golden_set_uri, model_store"):
        kfp_submit.check_params(package, {"store_dir": "/s", "ts_inference_url": "u", "ts_management_url": "u"})
