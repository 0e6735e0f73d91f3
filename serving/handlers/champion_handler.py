"""Champion: production predictions for PNG/JPEG, JSON or .npy bodies, each one logged.

`curl -T part.png http://127.0.0.1:8080/predictions/champion -H "Authorization: Bearer <key>"`
answers `[{"label": 3, "class_name": "3", "confidence": 0.97}]`, one entry per image.
Requests with header `X-Ctloop-Canary: 1` (deploy smoke tests) are answered but not logged.
A client may name the request with `X-Ctloop-Request-ID` (a part's serial number, say) so that
ground-truth feedback can refer to it later; otherwise TorchServe's request id is used. Either
way the answer carries the id used in its `X-Ctloop-Request-ID` header (TorchServe sets
`X-Request-ID` itself, always to its own id).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ctloop_handler_base import CtloopHandler, Outcome, PredictionLog, RequestError

from ctloop.wire import CANARY_HEADER, NPY_MAGIC, REQUEST_ID_HEADER, VERSION_HEADER

IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class ChampionHandler(CtloopHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        store_dir = os.environ.get("CTLOOP_STORE_DIR")
        self.log = (
            PredictionLog(store_dir, self.model_name, self.model_version, self.image_size,
                          self.card.get("atc_threshold")) if store_dir else None
        )

    def decode(self, body: object) -> np.ndarray:
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body)
            if body.startswith(NPY_MAGIC):
                return super().decode(body)
            if body.startswith(IMAGE_MAGICS):
                return self.decode_picture(body)
            body = parse_json(body)
        return decode_json(body)

    def decode_picture(self, payload: bytes) -> np.ndarray:
        """Any size, grey or colour: converted to grey and resized to the model's input."""
        height, width = self.image_size
        try:
            with Image.open(io.BytesIO(payload)) as picture:
                grey = picture.convert("L").resize((width, height), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise RequestError(f"unreadable PNG/JPEG ({error})") from error
        return (np.asarray(grey, dtype=np.float32) / 255.0)[None]

    def respond(self, idx: int, outcome: Outcome) -> object:
        labels = [int(label) for label in outcome.probabilities.argmax(axis=1)]
        names = [self.class_names[label] for label in labels]
        confidences = [float(row[label]) for row, label in zip(outcome.probabilities, labels)]
        request_id = self.request_header(idx, REQUEST_ID_HEADER) or self.context.get_request_id(idx)
        self.context.set_response_header(idx, VERSION_HEADER, self.model_version)
        self.context.set_response_header(idx, REQUEST_ID_HEADER, request_id)
        if self.log is not None and self.request_header(idx, CANARY_HEADER) != "1":
            self.log.append(request_id, outcome.images, labels, names, confidences)
        return [
            {"label": label, "class_name": name, "confidence": confidence}
            for label, name, confidence in zip(labels, names, confidences)
        ]


def parse_json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(
            f"malformed JSON ({error}); expected a PNG/JPEG body, a .npy batch or JSON "
            '{"image": [[...]]} / {"images": [[[...]]]}'
        ) from error


def decode_json(body: object) -> np.ndarray:
    """`{"image": HxW}` is one image, `{"images": [HxW, ...]}` a batch, values in [0, 1]."""
    if not isinstance(body, dict) or len(body.keys() & {"image", "images"}) != 1:
        raise RequestError('expected a JSON object with one key "image" (HxW list) or "images" (list of HxW lists)')
    key = "image" if "image" in body else "images"
    try:
        images = np.asarray(body[key], dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise RequestError(f'"{key}" must be nested lists of numbers of one shape ({error})') from error
    if key == "images" and images.size == 0:
        raise RequestError('empty batch: "images" holds no image')
    return images[None] if key == "image" else images
