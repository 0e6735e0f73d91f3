"""Model files: TorchScript with a JSON card, so TorchServe loads them without ctloop's code.

`torch.jit.load` rebuilds the module from TorchScript code and tensors; it never unpickles
arbitrary Python objects. The card (role, class names, input size) travels inside the same file
as a TorchScript extra file, so a model and its labels cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ctloop.images import write_atomic
from ctloop.wire import CARD_NAME



class ModelFileError(ValueError):
    """A model file is missing, corrupt or not a ctloop model."""


@dataclass(frozen=True)
class ModelCard:
    role: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    architecture: str
    atc_threshold: float | None = None  # ctloop.estimate; None in models saved before it existed

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        raw = json.loads(text)
        return cls(
            role=str(raw["role"]),
            class_names=tuple(str(name) for name in raw["class_names"]),
            image_size=(int(raw["image_size"][0]), int(raw["image_size"][1])),
            architecture=str(raw["architecture"]),
            atc_threshold=None if raw.get("atc_threshold") is None else float(raw["atc_threshold"]),
        )


@contextlib.contextmanager
def _torchscript_allowed() -> Iterator[None]:
    """TorchScript is deprecated upstream but is still the format TorchServe 0.12 loads without
    the model's source code (its torch.export path needs AOTInductor), so its warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


def save_model(model: nn.Module, card: ModelCard, path: str | Path) -> None:
    """Script `model` and write it with its card, atomically."""
    model.eval()
    buffer = io.BytesIO()
    with _torchscript_allowed():
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, buffer, _extra_files={CARD_NAME: card.to_json()})
    write_atomic(path, buffer.getvalue())


def load_model(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelCard]:
    """Load a model file written by save_model; ModelFileError names the file if it is not one."""
    extra = {CARD_NAME: ""}
    try:
        with _torchscript_allowed():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a loadable TorchScript model ({error})") from error
    if not extra[CARD_NAME]:
        raise ModelFileError(f"{path}: has no {CARD_NAME} card; was it written by ctloop?")
    module.eval()
    return module, ModelCard.from_json(extra[CARD_NAME])


def read_weights(path: str | Path, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Weights from a file a user provides, to start `model`'s training from: a ctloop model file
    (TorchScript, e.g. a champion bootstrapped on another line) or a `torch.save`d state_dict.

    Returns a complete state_dict for `model` and the names left at their initial values because
    their shape differs (a head for another number of classes, say). Raises ModelFileError,
    naming the file, when it holds no tensors, names a tensor `model` does not have (weights of
    another family), or matches nothing.
    """
    state = _read_state(Path(path))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ModelFileError(f"{path}: {len(unknown)} tensor(s) {model.__class__.__name__} does not have "
                             f"(weights of another family?), e.g. {', '.join(unknown[:3])}")
    skipped = sorted(name for name in state if state[name].shape != own[name].shape)
    loaded = {name: tensor for name, tensor in state.items() if name not in skipped}
    if not loaded:
        raise ModelFileError(f"{path}: no tensor fits {model.__class__.__name__}; every shape differs")
    return {**own, **loaded}, skipped


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ctloop model file or of a state_dict file (read with weights_only, so a
    pickle cannot run code)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with _torchscript_allowed():
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):
        pass
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error})") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise ModelFileError(f"{path}: neither a ctloop model nor a state_dict ({error})") from error
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: holds no state_dict (a dict of tensor names to tensors)")
    return state


def fit_atc_threshold(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float | None:
    """`model`'s ATC threshold (ctloop.estimate) on labelled images; None without any."""
    from ctloop.estimate import atc_threshold

    if len(images) == 0:
        return None
    probabilities = predict_proba(model, images)
    return atc_threshold(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels)


@torch.inference_mode()
def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, classes) for float32 images (N, H, W) in [0, 1]."""
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        chunks.append(torch.softmax(model(batch.unsqueeze(1)), dim=1).numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


@torch.inference_mode()
def embed(model: nn.Module, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Penultimate-layer features (N, D) for float32 images (N, H, W) in [0, 1], from the
    model's exported `embed` (every family of ctloop.models has one).

    Raises:
        ModelFileError: the model has no `embed` (a file saved by a ctloop without it).
    """
    if not hasattr(model, "embed"):
        raise ModelFileError(f"{type(model).__name__} has no embed method: retrain it with this ctloop "
                             "(its families export the penultimate layer) to measure input drift")
    chunks = [model.embed(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).unsqueeze(1))
              .numpy() for start in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

