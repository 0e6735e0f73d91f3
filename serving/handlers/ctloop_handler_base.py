"""Shared code of the ctloop TorchServe handlers, shipped in every .mar via --extra-files.

Runs inside TorchServe's worker processes, which have torch, numpy and pillow but not ctloop:
of ctloop it imports only `ctloop.wire`, the wire contract (headers, the .npy codec, the
prediction record, the store's layout, the card's name), which the archive ships beside it.

A request that is wrong gets its own 400 with `{"error": ...}`; the other requests of the same
TorchServe batch are answered normally and the worker keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from ctloop import wire

DEFAULT_MAX_IMAGES = 256


def setting(config: dict, name: str, default: int) -> int:
    """A serving limit: the environment's `CTLOOP_<NAME>` (set on the TorchServe process or the
    serving container), else the archive's model-config yaml, else `default`."""
    value = os.environ.get(f"CTLOOP_{name.upper()}", config.get(name, default))
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise ValueError(f"serving limit {name} must be a positive integer, got {value!r} "
                         f"(environment CTLOOP_{name.upper()} or the model-config yaml)")
    return number


class RequestError(ValueError):
    """The client sent something unusable; the message says what and what was expected, and
    `status` is the 4xx it is answered with (400, or 413 for a body over a size limit)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Outcome:
    """One request's result: class probabilities (N, classes) or the reason it was refused."""

    probabilities: np.ndarray | None = None
    images: np.ndarray | None = None
    error: str | None = None
    status: int = 200


def check_batch(images: np.ndarray, size: tuple[int, int], max_images: int) -> np.ndarray:
    """Return `images` as float32 (N, H, W) or raise RequestError naming the problem."""
    height, width = size
    if images.ndim == 4:
        raise RequestError(
            f"expected grey images of shape (N, {height}, {width}), got shape {images.shape}: "
            "an extra channel axis; convert to one grey channel"
        )
    if images.ndim != 3:
        raise RequestError(f"expected grey images of shape (N, {height}, {width}), got shape {images.shape}")
    if len(images) == 0:
        raise RequestError("empty batch: send at least one image")
    if len(images) > max_images:
        raise RequestError(f"too many images: {len(images)} in one request, at most {max_images}")
    if images.shape[1:] != size:
        raise RequestError(
            f"wrong image size {images.shape[1]}x{images.shape[2]}: this model takes {height}x{width} "
            "(PNG/JPEG are resized, arrays are not)"
        )
    if not np.issubdtype(images.dtype, np.number) or np.iscomplexobj(images):
        raise RequestError(f"expected float pixel values, got dtype {images.dtype}")
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise RequestError("images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise RequestError(f"pixel values must be in [0, 1], got [{low:.3g}, {high:.3g}]")
    return np.ascontiguousarray(images)


def decode_npy(payload: bytes) -> np.ndarray:
    """The .npy batch format of ctloop.wire; never unpickles."""
    try:
        return wire.decode_batch(payload)
    except wire.WireError as error:
        raise RequestError(str(error)) from error


def request_body(request: dict) -> object:
    """The payload of one request: the raw body, or the single multipart field."""
    for key in ("body", "data"):
        if key in request:
            return request[key]
    if len(request) != 1:
        raise RequestError(f"expected one body or one form field, got fields {sorted(request)}")
    return next(iter(request.values()))


def check_model_file(context, expected: str | None) -> None:
    """The model file must be the one the archive was built with (its model-config yaml holds the
    sha256, which the deploy checked against the registry): TorchScript is code, so a file
    replaced inside an unpacked archive must not load. Archives built before the sha256 was
    recorded have none to check."""
    if expected is None:
        return
    path = os.path.join(context.system_properties["model_dir"], context.manifest["model"]["serializedFile"])
    with open(path, "rb") as model:
        found = hashlib.file_digest(model, "sha256").hexdigest()
    if found != expected:
        raise RuntimeError(f"{path}: sha256 {found[:16]} is not the {expected[:16]} this archive was built with; "
                           "the model file was replaced, refusing to load it")


def error_body(message: str) -> str:
    return json.dumps({"error": message})


class CtloopHandler(BaseHandler):
    """preprocess -> inference -> postprocess over a TorchServe batch of requests.

    preprocess turns each request into a checked float32 (N, H, W) array (or a RequestError),
    inference runs the model once over all accepted images, and subclasses override
    `decode` (what a body may be) and `respond` (the JSON answer of one request).
    """

    def initialize(self, context) -> None:
        """Settings come from the archive's model-config yaml; threads are set before loading,
        because one intra-op thread per worker is ~10x the throughput of the default on small
        models."""
        config = context.model_yaml_config or {}
        check_model_file(context, config.get("model_sha256"))
        torch.set_num_threads(int(config.get("torch_threads", 1)))
        self.max_images = setting(config, "max_images_per_request", DEFAULT_MAX_IMAGES)
        self.card: dict = {}
        super().initialize(context)
        self.image_size = (int(self.card["image_size"][0]), int(self.card["image_size"][1]))
        self.class_names = [str(name) for name in self.card["class_names"]]
        self.model_name = str(context.manifest["model"]["modelName"])
        self.model_version = str(context.manifest["model"]["modelVersion"])

    def _load_torchscript_model(self, model_pt_path: str) -> torch.jit.ScriptModule:
        """Load the model and its card; a file without a card is not a ctloop model."""
        extra = {wire.CARD_NAME: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(model_pt_path, map_location=self.device, _extra_files=extra)
        if not extra[wire.CARD_NAME]:
            raise RuntimeError(f"{model_pt_path}: no {wire.CARD_NAME} card; not a ctloop model file")
        self.card = json.loads(extra[wire.CARD_NAME])
        return model

    def preprocess(self, data: list[dict]) -> list[Outcome]:
        outcomes = []
        for idx, request in enumerate(data):
            try:
                for header in (wire.REQUEST_ID_HEADER, wire.SLICE_HEADER):
                    value = self.request_header(idx, header)
                    if value is not None and (problem := wire.header_problem(header, value)):
                        raise RequestError(problem)
                images = check_batch(self.decode(request_body(request)), self.image_size, self.max_images)
                outcomes.append(Outcome(images=images))
            except RequestError as error:
                outcomes.append(Outcome(error=str(error), status=error.status))
        return outcomes

    def decode(self, body: object) -> np.ndarray:
        """Branch and eval models take only the compact .npy batch."""
        if isinstance(body, (bytes, bytearray)) and bytes(body[:6]) == wire.NPY_MAGIC:
            images = decode_npy(bytes(body))
            return images[None] if images.ndim == 2 else images
        raise RequestError(f"expected a .npy batch (ctloop.wire.encode_batch), content-type {wire.NPY_CONTENT_TYPE}")

    def inference(self, outcomes: list[Outcome]) -> list[Outcome]:
        accepted = [outcome.images for outcome in outcomes if outcome.error is None]
        if not accepted:
            return outcomes
        batch = torch.from_numpy(np.concatenate(accepted)).unsqueeze(1).to(self.device)
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(batch), dim=1).cpu().numpy()
        results, start = [], 0
        for outcome in outcomes:
            if outcome.error is None:
                stop = start + len(outcome.images)
                outcome = Outcome(probabilities=probabilities[start:stop], images=outcome.images)
                start = stop
            results.append(outcome)
        return results

    def postprocess(self, outcomes: list[Outcome]) -> list[str]:
        answers = []
        for idx, outcome in enumerate(outcomes):
            self.context.set_response_content_type(idx, "application/json")
            if outcome.error is not None:
                self.context.set_response_status(outcome.status, outcome.error, idx)
                answers.append(error_body(outcome.error))
            else:
                answers.append(json.dumps(self.respond(idx, outcome)))
        return answers

    def respond(self, idx: int, outcome: Outcome) -> object:
        raise NotImplementedError

    def request_header(self, idx: int, name: str) -> str | None:
        """Header lookup that does not depend on the client's capitalisation."""
        for key, value in self.context.get_all_request_header(idx).items():
            if isinstance(value, str) and key.lower() == name.lower():
                return value
        return None
