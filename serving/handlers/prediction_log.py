"""The champion's prediction log, written in segments (layout in ctloop.wire, read by
serving/store.py). Shipped in every .mar beside the handlers; standard library and numpy only.

Each worker process writes its own segments and no other process ever appends to them, so
records never interleave, on one node or across pods sharing a ReadWriteMany volume (O_APPEND
is not atomic across NFS clients). A segment is a record file and a sample file; the writer
knows both files' last good sizes, so a failed or short write (a full disk) is truncated back
and the records after it stay aligned with their samples. Records the store could not take are
counted, serving goes on, and the count is written as a marker line once the disk has room
again (the monitor reports it).

Segments rotate by size and age; at each rotation the writer applies the retention (by age,
then by total size, oldest first, never a segment written to within `segment_seconds`).
A segment whose files are no longer where the store says (deleted by hand, or the store's path
pointed at another directory: a volume mounted again, a symbolic link changed) is closed and the
next records start a new segment there, rather than going on into a file no reader finds.

fsync policy: none per record (a record costs one write per file); a segment's files are
fsynced when it is closed. A crashed worker loses nothing it wrote; a crashed machine loses at
most what the page cache held (seconds of records).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctloop import wire


@dataclass(frozen=True)
class StoreLimits:
    """Rotation and retention of the prediction store, with documented defaults."""

    segment_bytes: int = 64 * 1024 * 1024  # a segment's sample file rotates past this
    segment_seconds: int = 3600  # ... or when it is this old
    retention_seconds: int = 14 * 24 * 3600  # segments older than this are deleted
    retention_bytes: int = 20 * 1024 ** 3  # and the oldest while the store holds more than this


def write_whole(fd: int, data: bytes) -> None:
    """One os.write on an O_APPEND fd; a short write (disk full) is an error."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(f"short write to the prediction store: {written} of {len(data)} bytes")


class PredictionLog:
    """Appends one request's records and samples to this worker's open segment."""

    def __init__(self, store_dir: str, model_name: str, model_version: str, size: tuple[int, int],
                 atc_threshold: float | None = None, limits: StoreLimits = StoreLimits()) -> None:
        self.store_dir = Path(store_dir)
        self.model_name, self.model_version, self.size = model_name, model_version, size
        self.atc_threshold, self.limits = atc_threshold, limits
        self.writer = f"{socket.gethostname()}-{os.getpid()}"
        self.segment: _Segment | None = None
        self.lost, self.lost_since = 0, 0.0

    def append(self, request_id: str, server_id: str, images: np.ndarray, labels: list[int],
               names: list[str], confidences: list[float], slice_name: str = "") -> None:
        """Log one answered request; never raises for the store's sake (the answer matters more)."""
        now = time.time()
        try:
            segment = self._segment(now)
            marker = self._lost_marker(now)
            records = [wire.prediction_record(request_id, server_id, now, self.model_name, self.model_version, item,
                                              label, name, confidence, f"{segment.samples_ref}#{segment.count + item}",
                                              self.atc_threshold, slice_name)
                       for item, (label, name, confidence) in enumerate(zip(labels, names, confidences))]
            segment.write(np.ascontiguousarray(images, dtype=np.float32).tobytes(),
                          (marker + "".join(json.dumps(record) + "\n" for record in records)).encode("utf-8"),
                          len(records))
            self.lost = 0
        except OSError:
            self.lost_since = self.lost_since if self.lost else now
            self.lost += len(labels)

    def _segment(self, now: float) -> "_Segment":
        segment = self.segment
        if segment is not None and (segment.broken or segment.sample_size >= self.limits.segment_bytes
                                    or now - segment.started >= self.limits.segment_seconds
                                    or not segment.in_place(self.store_dir)):
            self.segment = None
            segment.close()
        if self.segment is None:
            prune_segments(self.store_dir, self.limits, now)
            stem = wire.segment_stem(time.time_ns(), self.model_name, self.model_version, self.writer)
            self.segment = _Segment(self.store_dir, stem, self.size, now)
        return self.segment

    def _lost_marker(self, now: float) -> str:
        if not self.lost:
            return ""
        return json.dumps({wire.LOST_FIELD: self.lost, "time": now, "since": self.lost_since}) + "\n"


class _Segment:
    """One segment's two files, opened O_EXCL (a name is never reused), and their good sizes."""

    def __init__(self, store_dir: Path, stem: str, size: tuple[int, int], started: float) -> None:
        (store_dir / wire.SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
        self.samples_ref = wire.segment_samples(stem, size)
        self.sample_fd = os.open(store_dir / self.samples_ref, flags, 0o644)
        try:
            self.log_fd = os.open(store_dir / wire.segment_log(stem), flags, 0o644)
        except OSError:
            os.close(self.sample_fd)
            raise
        opened = os.fstat(self.sample_fd)
        self.identity = (opened.st_dev, opened.st_ino)  # what in_place looks for at the store's path
        self.started, self.count = started, 0
        self.sample_size = self.log_size = 0
        self.broken = False

    def in_place(self, store_dir: Path) -> bool:
        """Whether the store's path to the sample file still leads to the file this segment has
        open (one stat per request)."""
        try:
            found = os.stat(store_dir / self.samples_ref)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self.identity

    def write(self, samples: bytes, lines: bytes, count: int) -> None:
        """Samples first, then the lines that reference them; on failure both files go back to
        their last good size, or, if that fails too, the segment is closed at the next append."""
        try:
            write_whole(self.sample_fd, samples)
            write_whole(self.log_fd, lines)
        except OSError:
            try:
                os.ftruncate(self.sample_fd, self.sample_size)
                os.ftruncate(self.log_fd, self.log_size)
            except OSError:
                self.broken = True
            raise
        self.sample_size += len(samples)
        self.log_size += len(lines)
        self.count += count

    def close(self) -> None:
        for fd in (self.sample_fd, self.log_fd):
            try:
                os.fsync(fd)
            except OSError:
                pass  # a full disk: what is written stays readable; the next segment starts clean
            os.close(fd)


def prune_segments(store_dir: Path, limits: StoreLimits, now: float) -> list[str]:
    """Delete whole segments (records and samples together) older than the retention, then the
    oldest while the store is over its size; never one modified within `segment_seconds` (a
    writer may still append to it). Returns the stems deleted. Several writers may prune at
    once: a file already gone is skipped."""
    folder = store_dir / wire.SEGMENTS_DIR
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    files: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for entry in entries:
        stem = entry.name.split(".", 1)[0]
        try:
            files.setdefault(stem, []).append((Path(entry.path), entry.stat()))
        except FileNotFoundError:
            continue
    total = sum(stat.st_size for group in files.values() for _, stat in group)
    deleted = []
    for stem in sorted(files):  # oldest first: names start with the start time
        group = files[stem]
        modified = max(stat.st_mtime for _, stat in group)
        if now - modified < limits.segment_seconds:
            continue
        if now - modified > limits.retention_seconds or total > limits.retention_bytes:
            for path, stat in group:
                path.unlink(missing_ok=True)
                total -= stat.st_size
            deleted.append(stem)
    return deleted
