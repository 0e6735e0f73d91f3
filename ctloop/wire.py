"""The wire contract between TorchServe's handlers and everything that talks to them or reads
what they write: request headers, the `.npy` batch codec, the prediction record and the
prediction store's layout, and TorchServe's key file.

It is the one module both sides import. The archive builder (serving/archive.py) ships this file
inside every `.mar`, so the handlers run it in TorchServe's workers without the rest of ctloop:
it imports nothing but the standard library and numpy.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

# Request headers a client may send, and the answer's headers.
CANARY_HEADER = "X-Ctloop-Canary"  # "1": a deploy smoke test, answered but not logged
REQUEST_ID_HEADER = "X-Ctloop-Request-ID"  # the client's name for a request; echoed in the answer
SLICE_HEADER = "X-Ctloop-Slice"  # the line or camera a request comes from; the monitor judges each apart
NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what a request id or a slice may be (fullmatch)
VERSION_HEADER = "X-Ctloop-Model-Version"  # the model version that answered
NPY_CONTENT_TYPE = "application/x-npy"

NPY_MAGIC = b"\x93NUMPY"
CARD_NAME = "ctloop.json"  # the model card's name inside a TorchScript file (ctloop.modelfile)

# The prediction store: segments, each written by one writer (a champion worker process) only:
# `segments/<stem>.jsonl`, its records, and `segments/<stem>.<H>x<W>.f32`, their input samples.
# No two processes append to one file, on one node or across nodes sharing a volume.
SEGMENTS_DIR = "segments"
FEEDBACK_NAME = "feedback.jsonl"  # ground truth beside the segments, when the line sends any (monitor reads it)
SEGMENT_PATTERN = re.compile(r"^(\d{20})_(.+)_v(\d+)_([A-Za-z0-9-]+)$")  # start ns, model, version, writer
SHARD_PATTERN = re.compile(r"^segments/[^/#]+\.(\d+)x(\d+)\.f32$")
LOST_FIELD = "lost"  # a marker line {"lost": n, "time": t, "since": t0}: n records the writer could not store

# Field -> accepted types of a prediction record; every record also has `time`, `model_name` and
# `item` (position in its request), which readers do not rely on.
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "request_id": (str,),  # the client's name for the request (feedback refers to it); may repeat
    "server_id": (str,),  # TorchServe's id for the request: with `item`, the record's unique key
    "model_version": (str,),
    "label": (int,),
    "confidence": (int, float),
    "sample": (str,),
    "class_name": (str,),  # the monitor's pass-rate yield counts the ok class by name
}

KEY_FILE_NAME = "key_file.json"
KEY_NAMES = ("management", "inference", "API")


class WireError(ValueError):
    """Bytes or a file that do not follow this contract; the message says what was expected."""


def encode_batch(images: np.ndarray) -> bytes:
    """The compact batch format: the .npy bytes of a float32 (N, H, W) array."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def decode_batch(payload: bytes) -> np.ndarray:
    """Inverse of encode_batch; never unpickles, and never allocates more than the payload holds:
    a header whose shape needs more bytes than follow it is refused before numpy allocates it
    (150 bytes claiming (1e5, 1e5, 1e5) floats would otherwise ask for 4 PB)."""
    try:
        _check_body_length(payload)
        return np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise WireError(f"unreadable .npy batch ({error}); send ctloop.wire.encode_batch bytes") from error


def _check_body_length(payload: bytes) -> None:
    stream = io.BytesIO(payload)
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    shape, _, dtype = readers[version](stream)
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle=False) with numpy's own message
    needed, available = math.prod(shape) * dtype.itemsize, len(payload) - stream.tell()
    if needed > available:
        raise ValueError(f"the header claims shape {tuple(shape)} of {dtype} ({needed:,} bytes), "
                         f"but only {available:,} bytes follow it")


def header_problem(header: str, value: str) -> str | None:
    """Why `value` cannot be a request id or a slice name, or None. Both are written into every
    record and reach collect's string columns and Slack, so they are short and plain: a serial
    number, a UUID, `line-3:part-0042`, `camera-2`."""
    if NAME_PATTERN.fullmatch(value):
        return None
    shown = value[:40] + "..." if len(value) > 40 else value
    return f"{header} must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {len(value)} characters ({shown!r})"


def segment_stem(start_ns: int, model_name: str, model_version: str, writer: str) -> str:
    """A segment's name without suffix: sorts by start time, and says which model version and
    writer (host and pid, say) wrote it."""
    return f"{start_ns:020d}_{model_name}_v{model_version}_{re.sub(r'[^A-Za-z0-9-]', '-', writer)}"


def segment_log(stem: str) -> str:
    """A segment's record file, relative to the store."""
    return f"{SEGMENTS_DIR}/{stem}.jsonl"


def segment_samples(stem: str, size: tuple[int, int]) -> str:
    """A segment's sample file, relative to the store; a record's `sample` is this plus `#<index>`."""
    return f"{SEGMENTS_DIR}/{stem}.{size[0]}x{size[1]}.f32"


def prediction_record(request_id: str, server_id: str, time: float, model_name: str, model_version: str,
                      item: int, label: int, class_name: str, confidence: float, sample: str,
                      atc_threshold: float | None = None, slice_name: str = "") -> dict[str, Any]:
    """One line of the prediction log: one answered image, keyed by TorchServe's request id and
    its position in the request (a client's own id may repeat), and the reference to its stored input
    (`<shard>#<index>`, index counted in records of that shard), with the answering model's ATC
    threshold (ctloop.estimate) when its card has one, so the monitor can estimate accuracy from
    the log alone, and the slice (line or camera) the client named, "" for none."""
    return {"request_id": request_id, "server_id": server_id, "time": time, "model_name": model_name,
            "model_version": model_version, "item": item, "label": label, "class_name": class_name, "confidence": confidence, "sample": sample,
            "atc_threshold": atc_threshold, "slice": slice_name}


def record_slice(record: dict[str, Any]) -> str:
    """The slice a prediction record names, "" for none (records written before slices have no field)."""
    return str(record.get("slice") or "")


def record_problem(record: Any) -> str | None:
    """What makes `record` something the champion handler would never write, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for field, types in RECORD_FIELDS.items():
        value = record.get(field)
        if value is None:
            return f"prediction record has no {field!r}"
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{field!r} must be {' or '.join(t.__name__ for t in types)}, got {value!r}"
    return None


def read_keys(path: str | Path) -> dict[str, str]:
    """The keys of TorchServe's key_file.json (written at its start): management, inference, API."""
    try:
        raw = json.loads(Path(path).read_text())
        return {name: str(raw[name]["key"]) for name in KEY_NAMES}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WireError(f"{path}: not a readable TorchServe key file ({error})") from error
