"""The serving fleet against a real TorchServe and MLflow on SQLite: a restart serves exactly the
champion, a deploy that died between two steps is repaired toward the registry, a deploy re-run
changes nothing, and two deploys at once cannot both win.

Real: TorchServe (the session's, or one of the test's own where it is killed), the registry, the
file lock. Simulated: a deploy dying between two steps is played by making the step's changes
by hand and stopping there.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from components.deploy.logic import SUPERSEDED, DeployOutcome, deploy_challenger
from components.deploy.reconcile import reconcile, reconcile_serving
from ctloop import registry
from ctloop.modelfile import load_model, predict_proba
from ctloop.registry import CHAMPION, PREVIOUS_CHAMPION
from ctloop_app.stack import REGISTERED_MODEL, LocalStack
from deploy_support import aliases, new_challenger
from serving.archive import archive_name, build_archive
from serving.client import TorchServeClient
from serving.state import model_sha256, read_state, write_state
from serving_support import random_images, write_model

pytestmark = [pytest.mark.serving, pytest.mark.slow]


def deploy(stack: LocalStack, boot, folder: Path, seed: int, **options) -> DeployOutcome:
    model, version, canary = new_challenger(folder, stack.tracking_uri, seed, boot.golden_set,
                                            train_set=boot.train_set)
    return deploy_challenger(model, version, canary, stack.model_store, stack.client, REGISTERED_MODEL,
                             stack.tracking_uri, **options)


def serving_now(client: TorchServeClient) -> tuple[str, list[str]]:
    return client.default_version("champion"), client.versions("champion")


def champion_archives(stack: LocalStack) -> list[str]:
    return sorted(path.name for path in stack.model_store.glob("champion-v*.mar"))


def test_a_deploy_declares_what_serves_and_prunes_archives(stack: LocalStack, boot, tmp_path: Path) -> None:
    for seed in (31, 32):
        outcome = deploy(stack, boot, tmp_path / str(seed), seed, keep_versions=2)

    assert outcome.removed_versions == ["1"]
    state = read_state(stack.model_store).model("champion")
    assert (state.default, sorted(state.versions)) == ("3", ["2", "3"]) == (
        serving_now(stack.client)[0], serving_now(stack.client)[1])
    assert champion_archives(stack) == ["champion-v2.mar", "champion-v3.mar"]
    assert state.versions["3"].sha256 == registry.model_sha256(REGISTERED_MODEL, "3", stack.tracking_uri)


def test_a_killed_torchserve_comes_back_serving_exactly_the_champion(own_stack: LocalStack, boot,
                                                                      tmp_path: Path) -> None:
    for seed in (33, 34, 35):
        deploy(own_stack, boot, tmp_path / str(seed), seed, keep_versions=2)
    registry.promote(REGISTERED_MODEL, "3", own_stack.tracking_uri)  # an operator's rollback, by hand
    reconcile(own_stack.client, own_stack.model_store, REGISTERED_MODEL, own_stack.tracking_uri)
    assert serving_now(own_stack.client) == ("3", ["3", "4"])

    os.killpg(own_stack.torchserve.process.pid, signal.SIGKILL)
    own_stack.torchserve.process.wait(timeout=30)
    own_stack.torchserve.start()

    client = TorchServeClient(own_stack.torchserve.inference_url, own_stack.torchserve.management_url,
                              own_stack.torchserve.keys())
    try:
        assert serving_now(client) == ("3", ["3", "4"])  # not v1's leftover, not the newest: the champion
        assert client.predict("champion", random_images(2, seed=1), canary=True).model_version == "3"
        assert {name: client.default_version(name) for name in ("b1", "b2")} == {"b1": "1", "b2": "1"}
        assert reconcile(client, own_stack.model_store, REGISTERED_MODEL, own_stack.tracking_uri).findings == []
    finally:
        client.close()


def test_a_deploy_that_died_after_switching_the_default_is_switched_back_then_redone(
        stack: LocalStack, boot, tmp_path: Path) -> None:
    model, version, canary = new_challenger(tmp_path, stack.tracking_uri, 36, boot.golden_set)
    archive = build_archive(model, "champion", version, stack.model_store)
    stack.client.register(archive.name, "champion")
    stack.client.set_default("champion", version)  # ... and the deploy stage died here

    found = reconcile(stack.client, stack.model_store, REGISTERED_MODEL, stack.tracking_uri)

    assert found.champion == "1"
    assert found.findings == [
        f"champion's default was v{version}; set to v1",
        f"unregistered champion v{version}, which the desired state does not list",
        f"removed archive champion-v{version}.mar, which the desired state does not list"]
    assert serving_now(stack.client) == ("1", ["1"])

    outcome = deploy_challenger(model, version, canary, stack.model_store, stack.client, REGISTERED_MODEL,
                                stack.tracking_uri, replaces="1")
    assert (outcome.status, outcome.repairs) == ("deployed", [])
    assert serving_now(stack.client) == (version, ["1", version]) and aliases(stack.tracking_uri)[CHAMPION] == version


def test_a_deploy_that_died_after_moving_the_alias_is_completed(stack: LocalStack, boot, tmp_path: Path) -> None:
    before = read_state(stack.model_store)
    deploy(stack, boot, tmp_path, 37)
    write_state(stack.model_store, before)  # the state write never happened ...
    stack.client.set_default("champion", "1")  # ... and TorchServe restarted from the old state

    found = reconcile(stack.client, stack.model_store, REGISTERED_MODEL, stack.tracking_uri)

    assert found.findings == ["the desired state's champion default was v1, the registry's champion is v2",
                              "champion's default was v1; set to v2"]
    assert serving_now(stack.client) == ("2", ["1", "2"]) and read_state(stack.model_store).model("champion").default == "2"


def test_re_running_a_finished_deploy_keeps_the_serving_version(stack: LocalStack, boot, tmp_path: Path) -> None:
    model, version, canary = new_challenger(tmp_path, stack.tracking_uri, 38, boot.golden_set)
    first = deploy_challenger(model, version, canary, stack.model_store, stack.client, REGISTERED_MODEL,
                              stack.tracking_uri, replaces="1")

    again = deploy_challenger(model, version, canary, stack.model_store, stack.client, REGISTERED_MODEL,
                              stack.tracking_uri, replaces="1")

    assert (first.status, again.status, again.repairs) == ("deployed", "deployed", [])
    assert "register" not in [step["name"] for step in again.steps]  # carried on, nothing registered twice
    assert serving_now(stack.client) == (version, ["1", version])
    assert aliases(stack.tracking_uri) == {CHAMPION: version, PREVIOUS_CHAMPION: "1"}
    assert (stack.model_store / archive_name("champion", version)).is_file()


def test_an_archive_replaced_by_hand_is_rebuilt_from_the_registry_and_reloaded(
        stack: LocalStack, boot, tmp_path: Path) -> None:
    impostor = build_archive(write_model("champion", tmp_path / "impostor.pt", seed=39), "champion", "1", tmp_path)
    target = stack.model_store / "champion-v1.mar"
    target.write_bytes(impostor.read_bytes())

    found = reconcile(stack.client, stack.model_store, REGISTERED_MODEL, stack.tracking_uri)

    expected = registry.model_sha256(REGISTERED_MODEL, "1", stack.tracking_uri)
    assert found.findings[0].startswith("the archive of champion v1 was not the registered model (sha256 ")
    assert model_sha256(target) == expected == read_state(stack.model_store).model("champion").versions["1"].sha256
    images = random_images(3, seed=2)
    served = stack.client.predict("champion", images, canary=True)
    assert served.labels == predict_proba(load_model(boot.model_files["champion"])[0], images).argmax(1).tolist()


def reconcile_step(stack: LocalStack, monkeypatch: pytest.MonkeyPatch):
    """The pipeline's first step, with the environment a stage gets."""
    for name, value in stack.stage_environment().items():
        monkeypatch.setenv(name, value)
    return reconcile_serving(stack.model_store, stack.torchserve.inference_url, stack.torchserve.management_url,
                             stack.tracking_uri, REGISTERED_MODEL, "ct-1")


def test_serving_that_matches_the_registry_is_left_alone_and_slack_is_not_told(
        stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    states = {name: stack.client.worker_states(name, "1") for name in ("champion", "b1", "b2")}
    found = reconcile_step(stack, monkeypatch)
    assert (found.champion, found.findings) == ("1", [])
    assert {name: stack.client.worker_states(name, "1") for name in states} == states  # same workers, same pids
    assert not stack.slack_outbox.exists()


def test_a_repair_is_told_to_slack(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    (stack.model_store / "serving-state.json").unlink()  # a store from before the desired state
    found = reconcile_step(stack, monkeypatch)
    expected = ["no desired state: adopted b1 v1 as TorchServe serves it",
                "no desired state: adopted b2 v1 as TorchServe serves it",
                "the desired state lists no champion version"]
    assert found.findings == expected
    [line] = stack.slack_outbox.read_text().splitlines()
    message = json.loads(line)["message"]
    assert message["text"] == f"Serving repaired to the registry's champion v1: {'; '.join(expected)}"
    assert {name: model.default for name, model in read_state(stack.model_store).models.items()} == {
        "b1": "1", "b2": "1", "champion": "1"}


def test_two_deploys_at_once_one_wins_and_the_other_is_superseded(stack: LocalStack, boot, tmp_path: Path) -> None:
    challengers = [new_challenger(tmp_path / name, stack.tracking_uri, seed, boot.golden_set)
                   for name, seed in (("a", 40), ("b", 41))]
    outcomes: dict[str, DeployOutcome] = {}
    start = threading.Barrier(2)

    def run(model: Path, version: str, canary: Path) -> None:
        client = TorchServeClient(stack.torchserve.inference_url, stack.torchserve.management_url,
                                  stack.torchserve.keys())
        start.wait()
        try:  # both judged their challenger against champion v1
            outcomes[version] = deploy_challenger(model, version, canary, stack.model_store, client,
                                                  REGISTERED_MODEL, stack.tracking_uri, replaces="1")
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=challenger) for challenger in challengers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    print(f"two concurrent deploys in {time.monotonic() - started:.1f} s")

    assert sorted(outcome.status for outcome in outcomes.values()) == ["deployed", SUPERSEDED]
    winner = next(version for version, outcome in outcomes.items() if outcome.status == "deployed")
    loser = next(version for version in outcomes if version != winner)
    assert outcomes[loser].old_version == winner  # the champion that came first, for Slack
    assert aliases(stack.tracking_uri) == {CHAMPION: winner, PREVIOUS_CHAMPION: "1"}
    assert serving_now(stack.client) == (winner, ["1", winner])
    assert read_state(stack.model_store).model("champion").default == winner
    assert not (stack.model_store / archive_name("champion", loser)).exists()


def test_an_operator_reads_splits_repairs_them_rolls_back_and_promotes(
        stack: LocalStack, boot, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ctloop_app.cli import main
    from ctloop_app.operate import Fleet

    Fleet(stack.model_store, stack.torchserve.inference_url, stack.torchserve.management_url, stack.tracking_uri,
          REGISTERED_MODEL, stack.torchserve.key_file).save(tmp_path)
    deploy(stack, boot, tmp_path / "v2", 42)
    flags = ["--stack", str(tmp_path)]

    assert main(["status", *flags]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "serving agrees with the registry"

    assert main(["rollback", *flags]) == 0
    assert capsys.readouterr().out.startswith("champion v1 serves (was v2); steps: wait_ready ")
    assert aliases(stack.tracking_uri) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}
    assert serving_now(stack.client) == ("1", ["1", "2"])

    stack.client.set_default("champion", "2")  # someone switched TorchServe by hand
    assert main(["status", *flags]) == 1
    assert "SPLIT: TorchServe's champion default is v2, the registry's champion v1" in capsys.readouterr().out
    assert main(["reconcile", *flags]) == 0
    assert capsys.readouterr().out == "champion's default was v2; set to v1\n"

    assert main(["promote", "2", *flags]) == 0
    assert aliases(stack.tracking_uri) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert serving_now(stack.client) == ("2", ["1", "2"])
    assert main(["promote", "7", *flags]) == 1
    assert "has no version 7" in capsys.readouterr().err
