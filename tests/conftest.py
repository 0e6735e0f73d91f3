"""Suite-wide fixtures. The tiers are folders: unit/ (no servers, no pipeline runs, no bootstrap),
integration/ (a real TorchServe, MLflow, webhook or KFP server on 127.0.0.1) and e2e/ (the
pipeline through kfp.local, the CLI, the benchmarks). Fixtures that start something import it
when first used, so the unit tier never loads MLflow or TorchServe's code."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pytest
from image_support import TEST_JAVA_OPTIONS

if TYPE_CHECKING:
    from ctloop_app.bootstrap import BootstrapResult
    from ctloop_app.stack import LocalStack
    from serving_support import Serving, SharedTorchServe

with warnings.catch_warnings():
    # ts/version.py (TorchServe 0.12) leaves version.txt open; collect it here so its
    # ResourceWarning does not surface later as an unrelated test's failure.
    warnings.simplefilter("ignore", ResourceWarning)
    import ts.version  # noqa: F401

    gc.collect()

# One OpenMP thread per process, set before anything imports torch and inherited by every server
# and kfp.local step the tests start. torch's default, a thread per core, makes two processes
# computing side by side (two xdist workers, or a worker and a pipeline step) spin against each
# other: five epochs of the champion on digits took 2.2 s alone and 14 s beside a second such
# process with two threads each, 2.2 s with one each.
os.environ["OMP_NUM_THREADS"] = "1"
# TorchServe's frontends here live seconds to minutes (about 33 start in `make test`), too short
# for the JVM's optimizing C2 compiler to pay back its compile threads: with C1 only, a start costs
# 1.2 CPU-seconds instead of 1.9, and the fleet and deploy tests 6 % less CPU; a serving pod's JVM
# 2.2 -> about 1.3. The shipped vmargs (serving/config.properties) are for long-running servers
# and stay as they are.
os.environ["JAVA_TOOL_OPTIONS"] = TEST_JAVA_OPTIONS

LEAKY_PREFIXES = ("MLFLOW_", "KFP_", "SLACK_", "TS_", "CTLOOP_")


SHIPPING_MARKS = ("containers", "actions")
UNIT_TIER = Path(__file__).resolve().parent / "unit"
# Fixtures that start a server, the Docker engine, MLflow's schema migrations or the bootstrap's
# training: none belongs in the unit tier.
UNIT_TIER_FORBIDS = {"boot", "stack", "own_stack", "serving", "session_torchserve", "engine", "built",
                     "mlflow_schema"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """How `make test`'s workers (pytest-xdist, `--dist loadgroup`) share the suite out.

    - What CI and the cluster run (marks `containers`, `actions`) is one group, so one worker
      builds and runs the images while the others run the tiers.
    - A module with a module-scoped fixture (a TorchServe lent to the module, a bench run) is a
      group, so that fixture is set up once; any other test goes to whichever worker is free.
    - Slow tests start first, so that no long test begins when the rest is nearly done. Of those,
      one that needs the session's bootstrap (`boot`: three models trained, about 20 CPU-seconds)
      comes first, then the slow tests that do not need it: one worker trains the models while the
      others run those, instead of waiting for the models on the bootstrap's lock.
    """
    for item in items:
        if _ships(item):
            item.add_marker(pytest.mark.xdist_group("shipping"))
        elif _uses_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    trains = next((item for item in items if item.get_closest_marker("slow") and _needs_boot(item)
                   and not _ships(item)), None)
    items.sort(key=lambda item: (not _ships(item), item.get_closest_marker("slow") is None,
                                 0 if item is trains else 2 if _needs_boot(item) and not _ships(item) else 1))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail rather than run ungrouped: pytest-xdist groups by a suffix on the node ID, which some
    pytest releases ignore without a word (pytest-dev/pytest-xdist#1386)."""
    if getattr(session.config.option, "loadgroup", False):  # set on pytest-xdist's workers only
        lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup did not group {lost[0]} (pytest-dev/pytest-xdist#1386)")


@pytest.hookimpl(tryfirst=True)  # before any fixture is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A unit test that asks for a server or the bootstrap fails before starting it: it would take
    `make test-fast` past its minute."""
    heavy = UNIT_TIER_FORBIDS.intersection(getattr(item, "fixturenames", ()))
    if heavy and item.path.is_relative_to(UNIT_TIER):
        pytest.fail(f"a unit test must not use {', '.join(sorted(heavy))}: move it to tests/integration",
                    pytrace=False)


def _ships(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in SHIPPING_MARKS)


def _needs_boot(item: pytest.Item) -> bool:
    return "boot" in getattr(item, "fixturenames", ())


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    fixtures = getattr(item, "_fixtureinfo", None)  # private: pytest has no public way to a fixture's scope
    if fixtures is None:
        raise pytest.UsageError(f"{item.nodeid}: pytest no longer has Function._fixtureinfo; tests/conftest.py "
                                "cannot keep a module's module-scoped fixture on one worker")
    return any(definition.scope == "module" for definitions in fixtures.name2fixturedefs.values()
               for definition in definitions)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the developer's shell must not change what a test sees."""
    for name in list(os.environ):
        if name.startswith(LEAKY_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained champion, B1 and B2 model files for 8x8 images (serving compares answers, so
    training them would add nothing)."""
    from serving_support import write_model

    folder = tmp_path_factory.mktemp("models")
    return {role: write_model(role, folder / f"{role}.pt", seed) for seed, role in enumerate(("champion", "b1", "b2"))}


@pytest.fixture(name="random_images")
def random_images_fixture() -> Callable[[int, int], np.ndarray]:
    """make(count, seed): float32 (count, 8, 8) images in [0, 1]."""
    from serving_support import random_images

    return random_images


@pytest.fixture(scope="session")
def session_torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator["SharedTorchServe"]:
    """The session's TorchServe, lent to one test module (`serving`) or test (`stack`) at a time;
    see serving_support.SharedTorchServe. A test that stops TorchServe starts its own."""
    from serving_support import SharedTorchServe

    with SharedTorchServe(tmp_path_factory.mktemp("torchserve")) as shared:
        yield shared


@pytest.fixture(scope="module")
def serving(session_torchserve: "SharedTorchServe", request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator["Serving"]:
    """A real TorchServe with no model registered, for the test module, logging champion
    predictions to a store of the module's own (`serving.server.store_dir`)."""
    from serving_support import Serving

    session_torchserve.lend(request.module.__name__, tmp_path_factory.mktemp("store"))
    running = Serving(session_torchserve.server)
    yield running
    running.client.close()


@pytest.fixture(scope="session")
def boot(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> "BootstrapResult":
    """The three models bootstrapped on digits, once per run: under pytest-xdist the first worker
    to ask trains them into the run's shared temporary folder and the others read them there."""
    if worker_id == "master":  # not distributed
        return _bootstrap(tmp_path_factory.mktemp("bootstrap"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "bootstrap"
    with FileLock(f"{shared}.lock"):
        return _bootstrap(shared)


def _bootstrap(folder: Path) -> "BootstrapResult":
    """The bootstrap in `folder`, trained there unless an earlier call left its result."""
    import dataclasses
    import json

    from ctloop_app.bootstrap import BootstrapResult, bootstrap_digits

    done = folder / "result.json"
    if done.is_file():
        fields = json.loads(done.read_text())
        paths = {name: Path(fields[name]) for name in ("train_set", "golden_set", "production_pool")}
        return BootstrapResult(model_files={role: Path(file) for role, file in fields["model_files"].items()},
                               golden_accuracy=fields["golden_accuracy"], **paths)
    result = bootstrap_digits(folder, seed=0, progress=False)
    done.write_text(json.dumps(dataclasses.asdict(result), default=str))
    return result


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with every schema migration applied, made once per session
    (migrating a new database takes MLflow seconds); each stack gets a copy."""
    from ctloop import registry

    database = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    registry.client(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def stack(session_torchserve: "SharedTorchServe", boot: "BootstrapResult", mlflow_schema: Path,
          tmp_path: Path) -> "LocalStack":
    """A fresh local stack per test, in `<tmp_path>/stack`: a new MLflow database (SQLite) with the
    champion as version 1, and the session's TorchServe serving champion v1, B1 and B2, the
    champion logging to the test's own prediction store (pipeline_support.stack_on)."""
    from pipeline_support import stack_on

    return stack_on(session_torchserve, tmp_path / "stack", boot, mlflow_schema)


@pytest.fixture
def own_stack(boot: "BootstrapResult", mlflow_schema: Path, tmp_path: Path) -> Iterator["LocalStack"]:
    """A fresh local stack with a TorchServe of its own, for a test that stops it."""
    from ctloop_app.stack import install_models, local_stack
    from pipeline_support import new_registry

    new_registry(tmp_path / "stack" / "mlflow", mlflow_schema)
    with local_stack(tmp_path / "stack", mlflow_server=False) as started:
        install_models(started, boot.model_files, boot.train_set)
        yield started


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    """A Docker SDK client whose engine answers; without one the test is skipped saying why, or
    fails when CTLOOP_REQUIRE_DOCKER=1 (as .ci/run sets)."""
    from ctloop_app.images_build import docker_engine
    from image_support import REQUIRE_DOCKER

    client, reason = docker_engine()
    if client is None:
        message = f"no Docker engine answered ({reason})"
        if REQUIRE_DOCKER:
            pytest.fail(f"{message}, and CTLOOP_REQUIRE_DOCKER=1 requires one")
        pytest.skip(f"{message}; start Docker (or set DOCKER_HOST) to build and run the images")
    yield client
    client.close()


@pytest.fixture(scope="session")
def built(engine) -> list[str]:
    """Every image of `make images`, built once per session through ctloop_app.images_build (the
    engine's layer cache makes an unchanged image take seconds); build times are printed."""
    import time

    from ctloop_app.images_build import build_images
    from image_support import IMAGES
    from kubeflow_pipeline.images import STAGES

    started = time.monotonic()
    refs = build_images(IMAGES, Path(__file__).resolve().parents[1], engine=lambda: (engine, ""),
                        log=lambda line: print(f"[{time.monotonic() - started:7.1f} s] {line}", flush=True))
    for ref in refs:
        print(f"{ref}: {engine.images.get(ref).attrs['Size'] / 1e9:.2f} GB")
    print(f"all {len(refs)} images in {time.monotonic() - started:.1f} s")
    assert refs == [IMAGES.image(name) for name in (*STAGES, "serving")]
    return refs
