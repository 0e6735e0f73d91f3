"""Hostile request bodies, small on the wire and enormous if believed: the inputs of issue 13's
table, shared by the handler's unit tests and the HTTP tests against a real TorchServe."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, followed by one tiny, wrong, image
    data chunk: a handler that decodes before checking the size fails on the data instead."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def deep_json(depth: int) -> bytes:
    """`[[[...]]]` nested `depth` deep: json.loads recurses once per level (RecursionError past ~1,000)."""
    return b"[" * depth + b"]" * depth


def long_number_json(digits: int) -> bytes:
    """One image whose only pixel is an integer of `digits` digits (Python refuses past 4,300)."""
    return b'{"image": [[' + b"1" * digits + b"]]}"


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A bare .npy header claiming a float32 array of `shape`, with no data after it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return header.getvalue()
