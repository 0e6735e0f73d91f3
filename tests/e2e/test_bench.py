"""`make bench` on its tiny setting: every section runs and its figures are sane.

The benchmark is not a timed test; this only checks that it runs end to end (real TorchServe,
uvicorn and kfp.local) and writes a complete results file without touching bench/results.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "bench" / "results.json"
SECTIONS = ("machine", "serving", "consensus", "cycle", "cycle_parts", "learning", "deploy", "longrun", "input_drift")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """The results and printed table of one `python -m bench --tiny` run."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "results.json"
    before = _read_if_there(COMMITTED)
    done = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out), "--work-dir", str(folder / "work")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _read_if_there(COMMITTED) == before, "the tiny run must not overwrite bench/results.json"
    return json.loads(out.read_text()), done.stdout


def _read_if_there(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_every_section_is_there_and_described(tiny) -> None:
    results, table = tiny
    assert set(SECTIONS) <= set(results)
    assert results["settings"]["name"] == "tiny"
    machine = results["machine"]
    assert machine["cpu_model"] and machine["usable_cores"] >= 1 and machine["ram_gib"] > 0
    assert machine["torch"] and machine["torchserve"] and machine["python"].startswith("3.11")
    for heading in ("**1. Serving**", "**2. Consensus filter**", "**3. CT cycle**",
                    "**3b. CT cycle on the parts line** (32x32)", "**4. Learning quality, digits**",
                    "**4. Learning quality, parts**",
                    "**5. Deploy under load**", "**6. The loop over time**", "**7. Input drift, digits**"):
        assert heading in table


def test_serving_compares_three_targets_without_failures(tiny) -> None:
    serving = tiny[0]["serving"]
    requests = tiny[0]["settings"]["requests"]
    assert serving["winner"] in [entry["settings"] for entry in serving["torchserve_tried"]]
    for entry in serving["torchserve_tried"]:
        assert entry["applied"]["workers"] == entry["settings"]["workers"]
        assert entry["applied"]["batch_size"] == entry["settings"]["batch_size"]
    for target in ("torchserve", "fastapi", "in_process"):
        for concurrency in ("1", "8"):
            load = serving["targets"][target][concurrency]
            assert (load["requests"], load["failed"]) == (requests, 0), (target, concurrency)
            assert load["requests_per_second"] > 0
            assert 0 < load["p50_ms"] <= load["p99_ms"]
    assert serving["ratios"]["torchserve_over_fastapi_rps_c8"] > 0


def test_consensus_gives_the_same_labels_both_ways(tiny) -> None:
    consensus = tiny[0]["consensus"]
    assert consensus["labels_identical"]
    assert consensus["torchserve"]["samples_per_second"] > 0 and consensus["in_process"]["samples_per_second"] > 0
    assert consensus["torchserve_over_in_process"] > 0


def test_the_parts_line_runs_the_same_cycle_at_32x32(tiny) -> None:
    cycle = tiny[0]["cycle_parts"]
    assert cycle["succeeded"], cycle["error"]
    assert cycle["image_size"] == [32, 32] and cycle["drift"].startswith("lighting")
    assert "train-op" in cycle["stages"] and cycle["cycle_seconds"] > 0


def test_cycle_deploys_and_its_time_adds_up(tiny) -> None:
    cycle = tiny[0]["cycle"]
    assert cycle["succeeded"], cycle["error"]
    assert (cycle["old_version"], cycle["new_version"]) == ("1", "2")
    assert 0 < cycle["trip_to_default_seconds"] < cycle["cycle_seconds"]
    assert cycle["trip_to_default_tasks"][-1] == "deploy-op"
    for name, stage in cycle["stages"].items():
        assert 0 <= stage["overhead"] <= stage["wall"] + 1e-3, name
        assert stage["work"] >= -1e-3, name
    assert cycle["stages"]["train-op"]["startup"] > 0 and cycle["warm_up_seconds"] > 0


@pytest.mark.parametrize("line", ["digits", "parts"])
def test_learning_scores_are_shares_on_both_lines(tiny, line: str) -> None:
    learning = tiny[0]["learning"][line]
    assert list(learning["kinds"]) == ["blur"]
    assert learning["image_size"] == {"digits": [8, 8], "parts": [32, 32]}[line]
    assert set(learning["bootstrap_golden_accuracy"]) == {"champion", "b1", "b2"}
    row = learning["kinds"]["blur"]
    for key in ("old_champion_accuracy", "new_champion_accuracy", "oracle_accuracy", "coverage",
                "pseudo_label_precision"):
        assert row[key] is None and key == "pseudo_label_precision" or 0.0 <= row[key] <= 1.0, key


def test_deploy_under_load_loses_nothing(tiny) -> None:
    deploy = tiny[0]["deploy"]
    assert deploy["outcomes"] == ["deployed"] and len(deploy["swaps"]) == 1
    assert deploy["during_swaps"]["requests"] == deploy["swaps"][0]["requests"] > 0
    assert deploy["steady"]["requests"] > 0
    assert deploy["during_swaps"]["failed"] == 0 and deploy["failed_total"] == 0
    assert deploy["during_swaps"]["max_ms"] < 3000


def test_the_loop_over_time_records_every_cycle(tiny) -> None:
    longrun = tiny[0]["longrun"]
    cycles = longrun["cycles"]
    assert [cycle["drift"] for cycle in cycles] == ["blur", "clean"]
    assert all(cycle["succeeded"] for cycle in cycles) and longrun["goals"]["all_succeeded"]
    first = cycles[0]
    assert first["retrained"] and first["train_size"] > 0 and first["champion"] == "1 -> 2"  # the tiny cycle deploys
    # Sampled every 0.05 s: the forked monitor takes about 0.04 s and can be missed entirely.
    assert {"train", "deploy"} <= set(first["peak_mb"]) and first["peak_mb"]["train"] > 50
    assert all(0.0 <= cycle[key] <= 1.0 for cycle in cycles for key in ("accuracy_before", "accuracy_after"))
    assert longrun["goals"]["max_seconds_over_first"] > 0


def test_input_drift_reports_delays_and_false_alarms(tiny) -> None:
    drift = tiny[0]["input_drift"]["digits"]
    settings = tiny[0]["settings"]
    assert list(drift["kinds"]) == ["blur"] and drift["window"] == settings["config"]["recent_window"]
    assert drift["window"] % drift["check_every"] == 0 and drift["horizon"] >= drift["window"]
    assert 0 < drift["drift_level"] < 1 and drift["drift_permutations"] >= 1 and drift["seconds_per_test"] > 0
    kind = drift["kinds"]["blur"]
    clean_checks = drift["streams"] * drift["clean_checks_per_stream"]
    for trigger in ("drift", "yield"):
        alarms = kind["false_alarms"][trigger]
        assert alarms["checks"] == clean_checks > 0 and 0 <= alarms["tripped"] <= alarms["checks"]
        assert alarms["rate"] == round(alarms["tripped"] / alarms["checks"], 4)
        assert drift["false_alarms"][trigger] == alarms  # one kind: the pooled figures are its own
    assert list(kind["severities"]) == [str(severity) for severity in settings["drift_severities"]]
    assert 0.0 <= kind["champion_accuracy_clean"] <= 1.0 and 0.0 <= kind["champion_yield_clean"] <= 1.0
    for figures in kind["severities"].values():
        assert 0.0 <= figures["champion_accuracy"] <= 1.0 and 0.0 <= figures["champion_yield"] <= 1.0
        for trigger in ("drift", "yield"):
            delays = figures[trigger]
            found = [delay for delay in delays["delays"] if delay is not None]
            assert len(delays["delays"]) == delays["streams"] == drift["streams"] and delays["detected"] == len(found)
            assert all(0 < delay <= drift["horizon"] for delay in found)
            if delays["max"] is not None:
                assert delays["detected"] == delays["streams"] and delays["median"] <= delays["max"] == max(found)
    # Blur at severity 1 moves the embeddings of even the tiny five-epoch champion: every stream trips.
    assert kind["severities"]["1.0"]["drift"]["detected"] == drift["streams"]
