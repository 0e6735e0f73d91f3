"""Make a running TorchServe serve exactly its desired state (serving.state), one lock at a time.

`apply` compares what TorchServe serves with the state and changes only what differs, in the
order that keeps a model answering: register what is missing (asynchronously, waiting for READY
workers: a synchronous register stalls the requests in flight), switch the default, then
unregister what the state no longer lists. `remove_stray_archives` deletes archives the state
does not list, so nothing pruned can come back at a restart.

`serving_lock` serializes every change to one model store's serving (deploy, repair, rollback,
promote): two pipeline runs, or a run and an operator, never interleave their steps.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from serving.client import TorchServeClient, TorchServeError
from serving.state import ServingState

__all__ = ["LockTimeoutError", "ReadyError", "apply", "remove_stray_archives", "serving_lock", "served",
           "wait_ready"]


class ReadyError(RuntimeError):
    """A version's workers did not become READY (they keep restarting, or time ran out)."""


class LockTimeoutError(RuntimeError):
    """Another deploy or repair held the serving lock for longer than this one would wait."""


@contextlib.contextmanager
def serving_lock(model_store: str | Path, model_name: str, timeout: float = 900.0) -> Iterator[None]:
    """Hold the lock on `model_name`'s serving in this model store (a file lock beside the archives,
    hidden so TorchServe never takes it for a model)."""
    path = Path(model_store) / f".{model_name}.serving.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=0o666)  # the stages' user and an operator's both take it
    try:
        lock.acquire(timeout=timeout)
    except Timeout as error:
        raise LockTimeoutError(f"another deploy of {model_name} held {path} for more than {timeout:.0f}s") from error
    try:
        yield
    finally:
        lock.release()


def served(client: TorchServeClient, model_name: str) -> tuple[str | None, list[str]]:
    """(default version, registered versions) of `model_name`; (None, []) if it is not registered."""
    try:
        return client.default_version(model_name), client.versions(model_name)
    except TorchServeError as error:
        if error.status == 404:
            return None, []
        raise


def wait_ready(client: TorchServeClient, model_name: str, version: str, workers: int, timeout: float) -> None:
    """Poll an asynchronously registered version until `workers` are READY.

    TorchServe 0.12 has no status for a worker that failed to load: it stays "UNLOADING" and is
    restarted under a new pid, again and again. A worker seen with one pid and then another
    before it was ever READY has therefore failed, and waiting longer would not help.
    """
    deadline = time.monotonic() + timeout
    first_pids: dict[int, int] = {}
    while True:
        states = client.worker_states(model_name, version)
        if sum(status == "READY" for status, _ in states) >= workers:
            return
        for index, (_, pid) in enumerate(states):
            if pid > 0 and first_pids.setdefault(index, pid) != pid:
                raise ReadyError(f"{model_name} v{version}: failed to start workers (worker {index} restarted, "
                                 f"pid {first_pids[index]} -> {pid}, before it was READY; TorchServe's model "
                                 "log says why)")
        if time.monotonic() > deadline:
            raise ReadyError(f"{model_name} v{version}: fewer than {workers} workers READY after {timeout:.0f}s")
        time.sleep(0.1)


def apply(client: TorchServeClient, state: ServingState, model_name: str, ready_timeout: float = 120.0) -> list[str]:
    """Make TorchServe serve `model_name` as `state` says; returns what was changed, one sentence each."""
    desired = state.model(model_name)
    default, registered = served(client, model_name)
    changes = []
    for version, entry in desired.versions.items():
        if version not in registered:
            client.register(entry.archive, model_name, entry.workers, wait=False)
            wait_ready(client, model_name, version, entry.workers, ready_timeout)
            changes.append(f"registered {model_name} v{version} ({entry.archive})")
    if default != desired.default:
        client.set_default(model_name, desired.default)
        changes.append(f"{model_name}'s default was v{default}; set to v{desired.default}")
    for version in registered:
        if version not in desired.versions:
            client.unregister(model_name, version)
            changes.append(f"unregistered {model_name} v{version}, which the desired state does not list")
    return changes


def remove_stray_archives(model_store: str | Path, state: ServingState, model_name: str) -> list[str]:
    """Delete `model_name`'s archives (`<name>-v<N>.mar`) that the state does not list."""
    listed = state.archives()
    removed = []
    for archive in sorted(Path(model_store).glob(f"{model_name}-v*.mar")):
        if archive.name not in listed:
            archive.unlink(missing_ok=True)
            removed.append(archive.name)
    return removed
