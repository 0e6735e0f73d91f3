"""Champion: production predictions for PNG/JPEG, JSON or .npy bodies, each one logged.

`curl -T part.png http://127.0.0.1:8080/predictions/champion -H "Authorization: Bearer <key>"`
answers `[{"label": 3, "class_name": "3", "confidence": 0.97}]`, one entry per image.
Requests with header `X-Ctloop-Canary: 1` (deploy smoke tests) are answered but not logged.
A client may name the request with `X-Ctloop-Request-ID` (a part's serial number, say: 1-128
characters of A-Z a-z 0-9 . _ : -) so that ground-truth feedback can refer to it later; otherwise
TorchServe's request id is used. Either way the answer carries the id used in its
`X-Ctloop-Request-ID` header (TorchServe sets `X-Request-ID` itself, always to its own id), and
the log keys each record by TorchServe's id, so a client's id may repeat. `X-Ctloop-Slice` (the
same characters) names the line or camera, which the record keeps for the monitor's per-slice
yield.

Hostile bodies are refused before they cost memory: a picture by the pixel count in its header
(`max_image_pixels`), JSON by its size, nesting depth and digit runs (`max_json_bytes`); both
limits come from the environment (`CTLOOP_MAX_IMAGE_PIXELS`, `CTLOOP_MAX_JSON_BYTES`) or the
archive's model-config yaml.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from dataclasses import fields

import numpy as np
from PIL import Image, UnidentifiedImageError

from ctloop_handler_base import CtloopHandler, Outcome, RequestError, setting
from prediction_log import PredictionLog, StoreLimits

from ctloop.wire import CANARY_HEADER, NPY_MAGIC, REQUEST_ID_HEADER, SLICE_HEADER, VERSION_HEADER

IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel line camera (8000 x 5000); grey, 40 MB decoded
DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024  # TorchServe's max_request_size in serving/config.properties
MAX_JSON_DEPTH = 6  # {"images": [[[...]]]} is 4 deep; 5 still gets the "extra channel axis" answer
MAX_NUMBER_DIGITS = 40  # more digits in a row carry no pixel value (float32 keeps ~9)
OPENERS, CLOSERS = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
LONG_DIGIT_RUN = re.compile(rb"[0-9]{%d,}" % (MAX_NUMBER_DIGITS + 1))


class ChampionHandler(CtloopHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        config = context.model_yaml_config or {}
        self.max_pixels = setting(config, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        self.max_json_bytes = setting(config, "max_json_bytes", DEFAULT_MAX_JSON_BYTES)
        store_dir = os.environ.get("CTLOOP_STORE_DIR")
        limits = StoreLimits(*(setting(config, field.name, field.default) for field in fields(StoreLimits)))
        self.log = (
            PredictionLog(store_dir, self.model_name, self.model_version, self.image_size,
                          self.card.get("atc_threshold"), limits) if store_dir else None
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
            body = parse_json(body, self.max_json_bytes)
        return decode_json(body)

    def decode_picture(self, payload: bytes) -> np.ndarray:
        """Any size up to `max_pixels`, grey or colour: converted to grey and resized to the
        model's input. The size is read from the header, before anything is decoded."""
        height, width = self.image_size
        try:
            with warnings.catch_warnings():  # Pillow warns past 89 megapixels; check_pixels decides
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                picture = Image.open(io.BytesIO(payload), formats=("PNG", "JPEG"))
        except Image.DecompressionBombError as error:  # Pillow refuses past 179 megapixels itself
            raise RequestError(f"image too large: {error} (max_image_pixels: {self.max_pixels:,})", 413) from error
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise RequestError(f"unreadable PNG/JPEG ({error})") from error
        with picture:
            self.check_pixels(*picture.size)
            try:
                grey = picture.convert("L").resize((width, height), Image.Resampling.BILINEAR)
            except (OSError, ValueError) as error:
                raise RequestError(f"unreadable PNG/JPEG ({error})") from error
        return (np.asarray(grey, dtype=np.float32) / 255.0)[None]

    def check_pixels(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise RequestError(f"image too large: {width}x{height} is {width * height:,} pixels, at most "
                               f"{self.max_pixels:,} (max_image_pixels)", 413)

    def respond(self, idx: int, outcome: Outcome) -> object:
        labels = [int(label) for label in outcome.probabilities.argmax(axis=1)]
        names = [self.class_names[label] for label in labels]
        confidences = [float(row[label]) for row, label in zip(outcome.probabilities, labels)]
        server_id = self.context.get_request_id(idx)
        request_id = self.request_header(idx, REQUEST_ID_HEADER) or server_id  # checked in preprocess
        self.context.set_response_header(idx, VERSION_HEADER, self.model_version)
        self.context.set_response_header(idx, REQUEST_ID_HEADER, request_id)
        if self.log is not None and self.request_header(idx, CANARY_HEADER) != "1":
            self.log.append(request_id, server_id, outcome.images, labels, names, confidences,
                            self.request_header(idx, SLICE_HEADER) or "")
        return [
            {"label": label, "class_name": name, "confidence": confidence}
            for label, name, confidence in zip(labels, names, confidences)
        ]


def parse_json(payload: bytes, max_bytes: int) -> object:
    """JSON within limits checked on the raw bytes first, because json.loads itself recurses once
    per nesting level and turns a 5,000-digit integer into a ValueError: both were 503s."""
    if len(payload) > max_bytes:
        raise RequestError(f"JSON body too large: {len(payload):,} bytes, at most {max_bytes:,} "
                           "(max_json_bytes); send a .npy batch (ctloop.wire.encode_batch)", 413)
    depth = json_depth(payload)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(f"JSON nested {depth} levels deep, at most {MAX_JSON_DEPTH}: expected "
                           '{"image": [[...]]} or {"images": [[[...]]]}')
    if (run := LONG_DIGIT_RUN.search(payload)) is not None:
        raise RequestError(f"JSON number with {len(run.group()):,} digits in a row, at most {MAX_NUMBER_DIGITS}: "
                           "pixel values are in [0, 1]")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(
            f"malformed JSON ({error}); expected a PNG/JPEG body, a .npy batch or JSON "
            '{"image": [[...]]} / {"images": [[[...]]]}'
        ) from error


def json_depth(payload: bytes) -> int:
    """The deepest bracket nesting in `payload`, brackets inside strings counted too (a body this
    handler accepts has no strings but its one key)."""
    raw = np.frombuffer(payload, np.uint8)
    steps = np.isin(raw, OPENERS).astype(np.int32) - np.isin(raw, CLOSERS)
    return int(np.cumsum(steps).max(initial=0))


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
