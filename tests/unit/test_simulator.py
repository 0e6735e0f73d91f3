"""The digits split and the production line: disjoint, stratified, seeded, drifting on time."""

from __future__ import annotations

import numpy as np
import pytest

import ctloop.simulator
from ctloop.images import ImageSet
from ctloop.simulator import DigitsSplit, DriftSpec, ProductionLine, digits_split

DIGITS = 1797


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return digits_split(seed=0)


@pytest.fixture(scope="module")
def pool(split: DigitsSplit) -> ImageSet:
    return split.production


def parts(split: DigitsSplit) -> dict[str, ImageSet]:
    return {"train": split.train, "golden": split.golden, "production": split.production}


def rows(images: ImageSet) -> set[bytes]:
    return {image.tobytes() for image in images.images}


def test_public_names() -> None:
    assert sorted(ctloop.simulator.__all__) == ["DigitsSplit", "DriftSpec", "ProductionLine", "digits_split"]


def test_split_sizes_and_convention(split: DigitsSplit) -> None:
    shares = {name: len(part) / DIGITS for name, part in parts(split).items()}
    assert shares == pytest.approx({"train": 0.5, "golden": 0.2, "production": 0.3}, abs=0.01)
    for part in parts(split).values():
        assert part.images.dtype == np.float32 and part.images.shape[1:] == (8, 8)
        assert part.labels.dtype == np.int64
        assert part.images.min() == 0.0 and part.images.max() == 1.0
        assert part.class_names == tuple(str(digit) for digit in range(10))


def test_split_is_disjoint_and_covers_every_digit_once(split: DigitsSplit) -> None:
    train, golden, production = (rows(part) for part in parts(split).values())
    assert not train & golden and not train & production and not golden & production
    assert len(train | golden | production) == DIGITS  # the 1797 bundled digits are all distinct


def test_split_is_stratified(split: DigitsSplit) -> None:
    everything = np.concatenate([part.labels for part in parts(split).values()])
    overall = np.bincount(everything, minlength=10) / len(everything)
    for part in parts(split).values():
        share = np.bincount(part.labels, minlength=10) / len(part)
        np.testing.assert_allclose(share, overall, atol=0.01)


def test_split_depends_on_the_seed_only(split: DigitsSplit) -> None:
    again = digits_split(seed=0)
    for name, part in parts(again).items():
        np.testing.assert_array_equal(part.images, parts(split)[name].images)
        np.testing.assert_array_equal(part.labels, parts(split)[name].labels)
    assert rows(digits_split(seed=1).golden) != rows(split.golden)


def test_same_seed_same_stream_other_seed_other_stream(pool: ImageSet) -> None:
    spec = DriftSpec("noise", 0.8, start=10)
    first = ProductionLine(pool, seed=3, drift=spec).take(40)
    second = ProductionLine(pool, seed=3, drift=spec).take(40)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    other = ProductionLine(pool, seed=4, drift=spec).take(40)
    assert not np.array_equal(other.images, first.images)


def test_the_stream_does_not_depend_on_how_it_is_taken(pool: ImageSet) -> None:
    """Chunking across the internal block boundary must not change a single sample."""
    spec = DriftSpec("shift", 1.0, start=250)
    whole = ProductionLine(pool, seed=2, drift=spec).take(700)
    line = ProductionLine(pool, seed=2, drift=spec)
    pieces = [line.take(size) for size in (7, 0, 300, 1, 392)]
    assert line.position == 700
    np.testing.assert_array_equal(np.concatenate([piece.images for piece in pieces]), whole.images)
    np.testing.assert_array_equal(np.concatenate([piece.labels for piece in pieces]), whole.labels)


@pytest.mark.parametrize("start", [0, 12, 256, 300])
def test_drift_begins_exactly_at_start(pool: ImageSet, start: int) -> None:
    clean = ProductionLine(pool, seed=5).take(400)
    line = ProductionLine(pool, seed=5, drift=DriftSpec("lighting", 1.0, start=start))
    drifted = ImageSet(
        np.concatenate([line.take(start // 2 + 1).images, line.take(400 - start // 2 - 1).images]),
        clean.labels,
        clean.class_names,
    )
    np.testing.assert_array_equal(drifted.images[:start], clean.images[:start])
    assert all(not np.array_equal(a, b) for a, b in zip(drifted.images[start:], clean.images[start:]))
    assert drifted.images.mean() < clean.images.mean()


def test_a_take_that_straddles_start_is_drifted_from_start_on(pool: ImageSet) -> None:
    clean = ProductionLine(pool, seed=6).take(30)
    line = ProductionLine(pool, seed=6, drift=DriftSpec("noise", 1.0, start=20))
    first = line.take(15)
    straddling = line.take(10)
    np.testing.assert_array_equal(first.images, clean.images[:15])
    np.testing.assert_array_equal(straddling.images[:5], clean.images[15:20])
    assert all(not np.array_equal(a, b) for a, b in zip(straddling.images[5:], clean.images[20:25]))


def test_labels_are_the_true_labels_of_the_drawn_samples(pool: ImageSet) -> None:
    line = ProductionLine(pool, seed=7, drift=DriftSpec("blur", 1.0, start=50))
    taken = line.take(100)
    lookup = {image.tobytes(): label for image, label in zip(pool.images, pool.labels)}
    assert [lookup[image.tobytes()] for image in taken.images[:50]] == taken.labels[:50].tolist()
    np.testing.assert_array_equal(taken.labels, ProductionLine(pool, seed=7).take(100).labels)
    assert taken.class_names == pool.class_names
    assert taken.images.dtype == np.float32 and 0.0 <= taken.images.min() and taken.images.max() <= 1.0


def test_drift_is_the_same_at_a_stream_index_whenever_it_started(pool: ImageSet) -> None:
    """The drift's draws belong to the stream, so a drifted distribution does not change over time."""
    early = ProductionLine(pool, seed=8, drift=DriftSpec("shift", 1.0, start=10)).take(600)
    late = ProductionLine(pool, seed=8, drift=DriftSpec("shift", 1.0, start=400)).take(600)
    np.testing.assert_array_equal(early.images[400:], late.images[400:])


def test_position_counts_the_samples_taken(pool: ImageSet) -> None:
    line = ProductionLine(pool)
    assert line.position == 0
    assert len(line.take(0)) == 0 and line.take(0).images.shape == (0, 8, 8)
    line.take(3)
    line.take(260)
    assert line.position == 263


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_take_refuses_a_bad_count(pool: ImageSet, n: object) -> None:
    with pytest.raises(ValueError, match=f"take: n must be an integer >= 0, got {n!r}"):
        ProductionLine(pool).take(n)  # type: ignore[arg-type]


def test_an_empty_pool_is_refused(pool: ImageSet) -> None:
    with pytest.raises(ValueError, match="the pool is empty"):
        ProductionLine(pool.subset(np.arange(0)))


@pytest.mark.parametrize(
    ("kind", "severity", "start", "message"),
    [
        ("fog", 0.5, 0, "unknown drift kind 'fog'; expected one of lighting, blur, noise, shift"),
        ("blur", 2.0, 0, r"drift severity must be a number in \[0, 1\], got 2.0"),
        ("blur", 0.5, -1, "drift start must be a stream index >= 0, got -1"),
        ("blur", 0.5, 1.5, "drift start must be a stream index >= 0, got 1.5"),
    ],
)
def test_a_bad_drift_spec_is_refused_when_written(kind: str, severity: float, start: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSpec(kind, severity, start)  # type: ignore[arg-type]
