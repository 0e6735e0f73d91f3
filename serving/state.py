"""The serving fleet's desired state: which versions of each model serve, and which is the default.

Every change to what TorchServe serves (an install, a deploy, a prune, a rollback, a repair)
writes it to `serving-state.json` in the model store, atomically, after the change succeeded on
the running server. A (re)starting TorchServe reads it: `render_config` turns it into TorchServe's
own `model_snapshot` property, which registers exactly those archives with those worker counts and
marks each model's default version. Without it TorchServe's `load_models=all` registered every
archive in the store and made whichever it listed first the default, so a restart could serve
a version the registry had long replaced.

This module uses only the standard library: the serving image runs it as a script before
TorchServe starts (serving/entrypoint.sh), without the rest of ctloop:

    python state.py config BASE_CONFIG MODEL_STORE OUT_CONFIG
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

STATE_FILE = "serving-state.json"
ARCHIVE_MODEL_MEMBER = "model.pt"  # the TorchScript file inside every ctloop archive


class StateError(ValueError):
    """The state file is unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class ServedVersion:
    """One version that serves: its archive in the model store, the sha256 of the model file the
    archive holds (what the registry's version must match), and its worker count."""

    archive: str
    sha256: str
    workers: int = 1


@dataclass(frozen=True)
class ModelState:
    default: str
    versions: dict[str, ServedVersion] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingState:
    """Desired state of one TorchServe (or every replica of one Deployment)."""

    models: dict[str, ModelState] = field(default_factory=dict)

    def serve(self, name: str, version: str, served: ServedVersion, default: bool) -> "ServingState":
        """This state with `version` of `name` serving, and the default if `default` (or if it is
        the model's only version)."""
        current = self.models.get(name)
        versions = {**(current.versions if current else {}), str(version): served}
        new_default = str(version) if default or current is None else current.default
        return replace(self, models={**self.models, name: ModelState(new_default, versions)})

    def serve_archive(self, name: str, version: str, archive: str | Path, workers: int = 1,
                      default: bool = True) -> "ServingState":
        """`serve` the archive (in the model store) of `version`, hashing the model file it holds."""
        return self.serve(name, version, ServedVersion(Path(archive).name, model_sha256(archive), workers), default)

    def without(self, name: str, versions: list[str]) -> "ServingState":
        """This state without `versions` of `name`; the default cannot be removed."""
        model = self.model(name)
        if model.default in versions:
            raise StateError(f"{name} version {model.default} is the default; it cannot stop serving")
        kept = {version: served for version, served in model.versions.items() if version not in versions}
        return replace(self, models={**self.models, name: replace(model, versions=kept)})

    def keep_newest(self, name: str, count: int) -> tuple["ServingState", list[str]]:
        """This state without `name`'s versions beyond the newest `count` (never the default),
        and those versions."""
        model = self.model(name)
        versions = sorted(model.versions, key=int)
        doomed = [version for version in versions[: max(len(versions) - count, 0)] if version != model.default]
        return self.without(name, doomed), doomed

    def model(self, name: str) -> ModelState:
        if name not in self.models:
            raise StateError(f"no version of {name} serves")
        return self.models[name]

    def archives(self) -> set[str]:
        return {served.archive for model in self.models.values() for served in model.versions.values()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "serving state") -> "ServingState":
        try:
            raw = json.loads(text)
            models = {
                name: ModelState(str(model["default"]),
                                 {str(version): ServedVersion(str(entry["archive"]), str(entry["sha256"]),
                                                              int(entry.get("workers", 1)))
                                  for version, entry in model["versions"].items()})
                for name, model in raw["models"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise StateError(f"{source} is not a ctloop serving state: {error!r}") from error
        for name, model in models.items():
            if model.default not in model.versions:
                raise StateError(f"{source}: the default {name} version {model.default} is not among its versions")
        return cls(models)

    def snapshot(self) -> str:
        """TorchServe's `model_snapshot` JSON (what its SnapshotManager restores at start)."""
        models = {
            name: {
                version: {"defaultVersion": version == model.default, "marName": served.archive,
                          "minWorkers": served.workers, "maxWorkers": served.workers,
                          "batchSize": 1, "maxBatchDelay": 0, "responseTimeout": 60}
                for version, served in model.versions.items()
            }
            for name, model in self.models.items()
        }
        count = sum(len(versions) for versions in models.values())
        return json.dumps({"name": "ctloop-serving-state", "modelCount": count, "models": models},
                          separators=(",", ":"), sort_keys=True)


def state_path(model_store: str | Path) -> Path:
    return Path(model_store) / STATE_FILE


def read_state(model_store: str | Path) -> ServingState | None:
    """The model store's desired state; None when nothing was ever deployed there."""
    path = state_path(model_store)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return ServingState.from_json(text, str(path))


def write_state(model_store: str | Path, state: ServingState) -> None:
    """Replace the state file atomically: a reader sees the old state or the new, never half."""
    path = state_path(model_store)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{STATE_FILE}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(state.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o664)  # TorchServe's user reads it on the shared volume
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def model_sha256(archive: str | Path) -> str:
    """sha256 of the model file inside an archive, comparable with the registered model file's."""
    try:
        with zipfile.ZipFile(archive) as bundle, bundle.open(ARCHIVE_MODEL_MEMBER) as model:
            return hashlib.file_digest(model, "sha256").hexdigest()
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise StateError(f"{archive} is not a ctloop model archive: {error}") from error


def render_config(config_text: str, state: ServingState | None, overrides: dict[str, str] | None = None) -> str:
    """A TorchServe config.properties that starts with exactly `state`: `load_models` dropped and
    `model_snapshot` set (without a state, a store nothing was deployed to, they stay as they
    are); `overrides` replace settings of the same name."""
    replaced = dict(overrides or {})
    if state is not None:
        replaced["model_snapshot"] = state.snapshot()
    dropped = {*replaced, *(["load_models"] if state is not None else [])}
    lines = [line for line in config_text.splitlines() if line.split("=", 1)[0].strip() not in dropped]
    return "\n".join([*lines, *(f"{key}={value}" for key, value in replaced.items())]) + "\n"


def main(argv: list[str]) -> int:
    """`config BASE_CONFIG MODEL_STORE OUT_CONFIG [KEY=VALUE...]`: write the config TorchServe
    starts with, KEY=VALUE replacing settings (the pod's proxy mode, serving/entrypoint.sh)."""
    if len(argv) < 4 or argv[0] != "config" or not all("=" in item for item in argv[4:]):
        print("usage: state.py config BASE_CONFIG MODEL_STORE OUT_CONFIG [KEY=VALUE...]", file=sys.stderr)
        return 2
    base, model_store, out = argv[1:4]
    overrides = dict(item.split("=", 1) for item in argv[4:])
    try:
        rendered = render_config(Path(base).read_text(), read_state(model_store), overrides)
    except (OSError, StateError) as error:
        print(f"ctloop serving state: {error}", file=sys.stderr)
        return 1
    Path(out).write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
