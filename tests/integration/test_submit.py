"""`ctloop submit` against a local server answering the KFP v2beta1 routes kfp.Client calls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from ctloop_app.cli import main
from kubeflow_pipeline import submit as kfp_submit
from kubeflow_pipeline.images import ImageSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "test-token"


class FakeKfp:
    """Just enough of the KFP API server: pipelines, versions, experiments, runs, recurring runs."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.requests: list[tuple[str, str, dict, object]] = []
        self.pipelines: dict[tuple[str, str], str] = {}  # (namespace, display name) -> id
        self.recurring: dict[str, dict] = {}
        self.uploads: list[dict] = []
        self.counter = 0

    def new_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    def handle(self, method: str, path: str, query: dict, body: object) -> tuple[int, dict]:
        self.requests.append((method, path, query, body))
        base = "/apis/v2beta1/"
        route = path[len(base):] if path.startswith(base) else None
        if method == "GET" and route == "healthz":
            return 200, {"multi_user": self.multi_user}
        if method == "GET" and route == "pipelines":
            # Multi-user KFP: a namespace's pipelines are listed only to a request naming that
            # namespace; without one, only the shared pipelines (no namespace).
            name = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            namespace = query.get("namespace", [""])[0] if self.multi_user else ""
            key = (namespace, name)
            found = [{"pipeline_id": self.pipelines[key], "display_name": name}] if key in self.pipelines else []
            return 200, {"pipelines": found} if found else {}
        if method == "POST" and route == "pipelines":
            key = ((body.get("namespace") or "") if self.multi_user else "", body["display_name"])
            if key in self.pipelines:
                return 409, {"error": f"pipeline {body['display_name']!r} already exists", "code": 6}
            pipeline_id = self.new_id("pipeline")
            self.pipelines[key] = pipeline_id
            return 200, {"pipeline_id": pipeline_id, "display_name": body["display_name"]}
        if method == "POST" and route == "pipelines/upload_version":
            self.uploads.append({"query": query, "spec": body})
            return 200, {"pipeline_id": query["pipelineid"][0], "pipeline_version_id": self.new_id("version"),
                         "display_name": query["name"][0]}
        if method == "GET" and route == "experiments":
            return 200, {}
        if method == "POST" and route == "experiments":
            return 200, {"experiment_id": "experiment-1", "display_name": body["display_name"]}
        if method == "POST" and route == "runs":
            return 200, {"run_id": self.new_id("run"), **body}
        if method == "GET" and route == "recurringruns":
            return 200, {"recurringRuns": list(self.recurring.values())} if self.recurring else {}
        if method == "DELETE" and route and route.startswith("recurringruns/"):
            self.recurring.pop(route.split("/")[1])
            return 200, {}
        if method == "POST" and route == "recurringruns":
            recurring_id = self.new_id("recurring")
            self.recurring[recurring_id] = {"recurring_run_id": recurring_id, **body}
            return 200, self.recurring[recurring_id]
        return 404, {"error": f"no route {method} {path}"}

    def bodies(self, method: str, route: str) -> list:
        return [body for m, p, _, body in self.requests if m == method and p == f"/apis/v2beta1/{route}"]


def multipart_file(content_type: str, data: bytes) -> bytes:
    boundary = content_type.split("boundary=")[1].encode()
    for part in data.split(b"--" + boundary):
        head, _, payload = part.partition(b"\r\n\r\n")
        if b'name="uploadfile"' in head:
            return payload.rsplit(b"\r\n", 1)[0]
    raise AssertionError("no uploadfile part in the upload")


@pytest.fixture(params=[False], ids=["single-user"])
def kfp_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeKfp]]:
    fake = FakeKfp(multi_user=request.param)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, answer = 401, {"error": "missing bearer token"}
            else:
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    body = next(yaml.safe_load_all(multipart_file(content_type, raw)))
                else:
                    body = json.loads(raw) if raw else None
                status, answer = fake.handle(self.command, url.path, parse_qs(url.query), body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


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
                      ("monitor", "collect", "validate", "consensus", "train", "analyze", "deploy", "notify")}

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
