"""validate: checks that the collected set can go on to consensus filtering and training.

Every check runs (one bad figure does not hide the others), the Markdown report is written in
every case, and a failure raises ValidationError naming the file and each failed check.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctloop.collected import UNLABELLED, CollectedSet
from ctloop.images import ImageDataError, write_atomic

__all__ = ["Check", "ValidationError", "ValidationReport", "validate_collected"]

Status = Literal["pass", "fail", "warn", "n/a"]


class ValidationError(ImageDataError):
    """The collected set is unfit for training; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Check:
    """One row of the report: what was checked, the outcome and the figures behind it."""

    name: str
    status: Status
    figures: str


@dataclass(frozen=True)
class ValidationReport:
    """All checks of one collected set.

    Attributes:
        ok: no check failed (warnings allowed).
        checks: every check, in report order.
        new_samples: rows from the monitored window.
        previous_samples: rows from the previous training set.
        report: the Markdown report written.
    """

    ok: bool
    checks: tuple[Check, ...]
    new_samples: int
    previous_samples: int
    report: Path

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [dataclasses.asdict(check) for check in self.checks],
            "new_samples": self.new_samples,
            "previous_samples": self.previous_samples,
            "report": str(self.report),
        }


def validate_collected(
    collected: Path,
    image_size: tuple[int, int],
    num_classes: int,
    min_samples: int,
    report_out: Path,
) -> ValidationReport:
    """Check a CollectedSet file and write a Markdown report of every check.

    Args:
        collected: the collect stage's CollectedSet (.npz).
        image_size: (H, W) the champion takes.
        num_classes: number of classes the champion predicts.
        min_samples: fewest new (window) samples worth retraining on.
        report_out: where to write the Markdown report.

    Returns:
        The report, when no check failed (warnings are allowed).

    Raises:
        ValidationError: a check failed; the message names the file and every failed check.
    """
    collected, report_out = Path(collected), Path(report_out)
    try:
        data = CollectedSet.load(collected)
    except ImageDataError as error:
        checks: tuple[Check, ...] = (Check("readable file", "fail", str(error)),)
        new_count = previous_count = 0
    else:
        checks = (Check("readable file", "pass", f"{len(data)} samples"),) + _checks(
            data, tuple(image_size), num_classes, min_samples
        )
        new_count = int(np.count_nonzero(data.is_new))
        previous_count = len(data) - new_count
    report = ValidationReport(
        ok=not any(check.status == "fail" for check in checks),
        checks=checks,
        new_samples=new_count,
        previous_samples=previous_count,
        report=report_out,
    )
    write_atomic(report_out, _markdown(collected, report).encode("utf-8"))
    if not report.ok:
        problems = "; ".join(f"{check.name}: {check.figures}" for check in report.failures)
        raise ValidationError(f"{collected}: validation failed - {problems} (report: {report_out})")
    return report


def _checks(data: CollectedSet, size: tuple[int, ...], num_classes: int, min_samples: int) -> tuple[Check, ...]:
    images, is_new = data.images, data.is_new.astype(bool)
    numeric = np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)
    return (
        _shape(images, size),
        Check(
            "dtype",
            "pass" if images.dtype == np.float32 else "fail",
            f"{images.dtype}, expected float32",
        ),
        _finite(images) if numeric else Check("finite values", "n/a", f"dtype {images.dtype} is not numeric"),
        _value_range(images) if numeric else Check("value range", "n/a", f"dtype {images.dtype} is not numeric"),
        Check(
            "class names",
            "pass" if len(data.class_names) == num_classes else "fail",
            f"{len(data.class_names)} names, expected {num_classes}",
        ),
        _label_range(data.labels, is_new, num_classes),
        Check(
            "new samples",
            "pass" if is_new.sum() >= min_samples else "fail",
            f"{int(is_new.sum())} new samples, at least {min_samples} needed",
        ),
        _duplicate_records(data.server_ids[is_new], data.items[is_new]),
        _duplicate_pixels(images, is_new) if images.ndim == 3 else Check("identical images", "n/a", "bad shape"),
        _coverage(data.labels[~is_new], num_classes, int((~is_new).sum())),
    )


def _shape(images: np.ndarray, size: tuple[int, ...]) -> Check:
    expected = f"expected (N, {size[0]}, {size[1]})"
    if images.ndim != 3:
        return Check("image shape", "fail", f"array of shape {images.shape}, {expected}")
    if len(images) == 0:
        return Check("image shape", "fail", f"no images at all, {expected}")
    ok = images.shape[1:] == size
    return Check(
        "image shape",
        "pass" if ok else "fail",
        f"{len(images)} images of {images.shape[1]}x{images.shape[2]}, expected {size[0]}x{size[1]}",
    )


def _per_image(mask: np.ndarray) -> np.ndarray:
    """Which images (first axis) have any flagged value."""
    return mask.reshape(len(mask), -1).any(axis=1) if mask.ndim > 1 else mask


def _finite(images: np.ndarray) -> Check:
    bad = _per_image(~np.isfinite(images)) if images.size else np.zeros(0, dtype=bool)
    return Check(
        "finite values",
        "fail" if bad.any() else "pass",
        f"{int(bad.sum())} images with NaN or infinite values" + _first(np.flatnonzero(bad)),
    )


def _value_range(images: np.ndarray) -> Check:
    with np.errstate(invalid="ignore"):
        outside = (images < 0) | (images > 1)
    bad = _per_image(outside) if images.size else np.zeros(0, dtype=bool)
    finite = images[np.isfinite(images)] if images.size else images
    span = f", values in [{finite.min():.3g}, {finite.max():.3g}]" if finite.size else ""
    return Check(
        "value range",
        "fail" if bad.any() else "pass",
        f"{int(bad.sum())} images with pixels outside [0, 1]{span}" + _first(np.flatnonzero(bad)),
    )


def _label_range(labels: np.ndarray, is_new: np.ndarray, num_classes: int) -> Check:
    if not np.issubdtype(labels.dtype, np.integer):
        return Check("label ids", "fail", f"labels of dtype {labels.dtype}, expected int64")
    in_range = (labels >= 0) & (labels < num_classes)
    bad = ~in_range & ~(is_new & (labels == UNLABELLED))
    labelled = int(in_range.sum())
    figures = (
        f"{labelled} labelled ({int(in_range[is_new].sum())} new), {int((is_new & (labels == UNLABELLED)).sum())} "
        f"new unlabelled, {int(bad.sum())} out of [0, {num_classes - 1}]"
    )
    if bad.any():
        figures += f" (ids {sorted(set(labels[bad].tolist()))[:5]})"
    return Check("label ids", "fail" if bad.any() else "pass", figures)


def _duplicate_records(server_ids: np.ndarray, items: np.ndarray) -> Check:
    """A record is keyed by TorchServe's request id and its item, which no client chooses: a key
    seen twice means a log replayed or copied into itself, not a part inspected twice."""
    counts = Counter(zip(server_ids.tolist(), items.tolist()))
    repeated = {key: count for key, count in counts.items() if count > 1}
    extra = sum(count - 1 for count in repeated.values())
    figures = f"{extra} new samples repeat a record already in the window"
    if repeated:
        (server_id, item), count = next(iter(repeated.items()))
        figures += f" (e.g. TorchServe request {server_id!r} item {item}, {count} times)"
    return Check("duplicate records", "fail" if repeated else "pass", figures)


def _duplicate_pixels(images: np.ndarray, is_new: np.ndarray) -> Check:
    """Identical pixels are a warning: a static scene can produce them legitimately."""
    rows = [image.tobytes() for image in np.ascontiguousarray(images)]
    seen: set[bytes] = set()
    repeats = 0
    for row, new in zip(rows, is_new):
        if new:
            repeats += row in seen
            seen.add(row)
    previous = {row for row, new in zip(rows, is_new) if not new}
    equal_previous = sum(row in previous for row, new in zip(rows, is_new) if new)
    return Check(
        "identical images",
        "warn" if repeats else "pass",
        f"{repeats} new samples repeat another new sample's pixels, "
        f"{equal_previous} equal a previous training sample (all kept)",
    )


def _coverage(previous_labels: np.ndarray, num_classes: int, previous_count: int) -> Check:
    if previous_count == 0:
        return Check("class coverage", "n/a", "no previous training set merged")
    present = set(previous_labels[(previous_labels >= 0) & (previous_labels < num_classes)].tolist())
    missing = sorted(set(range(num_classes)) - present)
    figures = f"{len(present)} of {num_classes} classes among {previous_count} previous samples"
    if missing:
        figures += f", missing class ids {missing}"
    return Check("class coverage", "fail" if missing else "pass", figures)


def _first(index: np.ndarray, limit: int = 5) -> str:
    return f" (rows {index[:limit].tolist()})" if len(index) else ""


def _markdown(collected: Path, report: ValidationReport) -> str:
    verdict = "passed" if report.ok else "FAILED"
    lines = [
        f"# Validation of `{collected.name}`: {verdict}",
        "",
        f"File: `{collected}`  ",
        f"New samples: {report.new_samples}, previous samples: {report.previous_samples}",
        "",
        "| Check | Result | Figures |",
        "|---|---|---|",
    ]
    for check in report.checks:
        figures = check.figures.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {check.name} | {check.status} | {figures} |")
    return "\n".join(lines) + "\n"
