"""What an operator does to the serving fleet by hand: `ctloop status`, `reconcile`, `promote`, `rollback`.

Each works on a `Fleet`: one TorchServe (its URLs and keys), its model store (the desired state
and the archives) and the MLflow registered model whose `champion` alias is the record. A local
stack (`ctloop serve`, `make run`) writes its own as `stack.json` in its work folder; on a cluster
the URLs, store and keys come from flags and the environment, as the deploy stage gets them.

`promote` runs what the deploy stage runs (components.deploy.logic.deploy_challenger: the serving
lock, a repair first, register, smoke test, set default, verify, the alias by compare-and-set,
the desired state, pruning), with a canary made here: the version's own training images (the
registry keeps them with it) and its in-process answers.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.deploy.logic import DeployOutcome, deploy_challenger
from components.deploy.reconcile import Reconciliation, reconcile
from ctloop import registry
from ctloop.canary import Canary
from ctloop.images import ImageSet
from ctloop.redact import redact_url
from serving import fleet
from serving.client import TorchServeClient, client_from_env, read_key_file
from serving.state import read_state, state_path

__all__ = ["Fleet", "FleetStatus", "promote", "reconcile_fleet", "rollback", "status"]

STACK_FILE = "stack.json"
CANARY_SIZE = 64


@dataclass(frozen=True)
class Fleet:
    """Where serving and its record are. key_file: TorchServe's key_file.json; None: the keys
    come from CTLOOP_TS_KEY_FILE or CTLOOP_TS_MANAGEMENT_KEY / CTLOOP_TS_INFERENCE_KEY."""

    model_store: Path
    inference_url: str
    management_url: str
    tracking_uri: str
    registered_model: str = "ctloop-champion"
    key_file: Path | None = None

    def client(self) -> TorchServeClient:
        if self.key_file is not None:
            return TorchServeClient(self.inference_url, self.management_url, read_key_file(self.key_file))
        return client_from_env(self.inference_url, self.management_url)

    def save(self, work_dir: Path) -> Path:
        """Write this fleet as `<work_dir>/stack.json`, for the commands to find."""
        path = Path(work_dir) / STACK_FILE
        path.write_text(json.dumps({key: str(value) if value is not None else None
                                    for key, value in asdict(self).items()}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, work_dir: Path) -> "Fleet":
        path = Path(work_dir) / STACK_FILE
        try:
            fields = json.loads(path.read_text())
            return cls(Path(fields["model_store"]), fields["inference_url"], fields["management_url"],
                       fields["tracking_uri"], fields["registered_model"],
                       Path(fields["key_file"]) if fields.get("key_file") else None)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a running stack's description ({error!r}); is `ctloop serve "
                             f"--work-dir {work_dir}` running?") from error


@dataclass(frozen=True)
class FleetStatus:
    """What serves where, next to the registry; `splits` says where they disagree."""

    aliases: dict[str, str | None]
    desired: dict[str, tuple[str, list[str]]]
    served: dict[str, tuple[str | None, list[str]]]
    splits: list[str]

    def lines(self, fleet_: Fleet) -> list[str]:
        names = sorted(set(self.desired) | set(self.served))
        rows = [f"registry {fleet_.registered_model} at {redact_url(fleet_.tracking_uri)}: " +
                ", ".join(f"{alias} v{version}" for alias, version in self.aliases.items() if version)]
        for name in names:
            want, have = self.desired.get(name, (None, [])), self.served.get(name, (None, []))
            rows.append(f"{name}: desired default v{want[0]} of {_versions(want[1])}; TorchServe default "
                        f"v{have[0]} of {_versions(have[1])}")
        rows += [f"SPLIT: {split}" for split in self.splits] or ["serving agrees with the registry"]
        return rows


def status(fleet_: Fleet) -> FleetStatus:
    """Read the registry's aliases, the desired state and TorchServe; change nothing."""
    aliases = {alias: registry.get_version_by_alias(fleet_.registered_model, alias, fleet_.tracking_uri)
               for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION, registry.CHALLENGER)}
    state = read_state(fleet_.model_store)
    desired = {name: (model.default, sorted(model.versions, key=int)) for name, model in
               (state.models.items() if state else [])}
    with contextlib.closing(fleet_.client()) as client:
        served = {name: fleet.served(client, name) for name in sorted(set(desired) | {"champion"})}
    return FleetStatus(aliases, desired, served, _splits(aliases[registry.CHAMPION], desired, served,
                                                         state_path(fleet_.model_store) if state is None else None))


def _splits(champion: str | None, desired: dict[str, tuple[str, list[str]]],
            served: dict[str, tuple[str | None, list[str]]], missing_state: Path | None) -> list[str]:
    """Where the registry's champion, the desired state and TorchServe disagree, one sentence each."""
    splits = []
    if missing_state is not None:
        splits.append(f"no desired state ({missing_state}): a restart loads every archive in the store")
    elif desired.get("champion", (None, []))[0] != champion:
        splits.append(f"the desired state's champion default is v{desired.get('champion', (None, []))[0]}, "
                      f"the registry's champion v{champion}")
    if served["champion"][0] != champion:
        splits.append(f"TorchServe's champion default is v{served['champion'][0]}, the registry's champion v{champion}")
    for name, (default, versions) in desired.items():
        served_default, served_versions = served[name]
        if name != "champion" and served_default != default:
            splits.append(f"TorchServe's {name} default is v{served_default}, the desired state's v{default}")
        if served_versions != versions:
            splits.append(f"TorchServe serves {name} {_versions(served_versions)}, the desired state lists "
                          f"{_versions(versions)}")
    return splits


def reconcile_fleet(fleet_: Fleet) -> Reconciliation:
    """`ctloop reconcile`: what every pipeline run starts with, by hand."""
    with contextlib.closing(fleet_.client()) as client, fleet.serving_lock(fleet_.model_store, "champion"):
        return reconcile(client, fleet_.model_store, fleet_.registered_model, fleet_.tracking_uri)


def promote(fleet_: Fleet, version: str, keep_versions: int = 3) -> DeployOutcome:
    """Deploy registry version `version` as the champion, as the deploy stage would."""
    champion = registry.require_alias(fleet_.registered_model, registry.CHAMPION, fleet_.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="ctloop-promote-") as folder:
        files = registry.download_version(fleet_.registered_model, version, folder, fleet_.tracking_uri)
        canary = _canary(files, Path(folder) / "canary.npz")
        with contextlib.closing(fleet_.client()) as client:
            return deploy_challenger(files.model_file, str(version), canary, fleet_.model_store, client,
                                     fleet_.registered_model, fleet_.tracking_uri, keep_versions=keep_versions,
                                     replaces=champion)


def rollback(fleet_: Fleet, keep_versions: int = 3) -> DeployOutcome:
    """Promote the version MLflow's `previous-champion` alias names."""
    previous = registry.require_alias(fleet_.registered_model, registry.PREVIOUS_CHAMPION, fleet_.tracking_uri)
    return promote(fleet_, previous, keep_versions)


def _canary(files: registry.ModelVersionFiles, out: Path) -> Path:
    """The first CANARY_SIZE images the version was trained on, with its in-process answers."""
    if files.train_set is None:
        raise registry.RegistryError(f"version {files.version} was registered without its training set; "
                                     "there are no images to smoke-test it with")
    from ctloop.modelfile import load_model, predict_proba  # torch: only for promote

    train = ImageSet.load(files.train_set)
    images, labels = train.images[:CANARY_SIZE], train.labels[:CANARY_SIZE]
    model, _ = load_model(files.model_file)
    Canary(images, labels, predict_proba(model, images).astype(np.float32)).save(out)
    return out


def _versions(versions: list[str]) -> str:
    return ", ".join(f"v{version}" for version in versions) or "nothing"
