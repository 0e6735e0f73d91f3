"""A second simulated production line: grey images of machined parts on a conveyor belt.

The digits line (ctloop.simulator) is 8x8 and has no notion of a defect. Real inspection lines
photograph one part per frame and look for small, thin flaws on a large, varied, good-looking
part, and that is what a model must learn here: the part's shape, size, pose, surface and the
belt vary a lot within a class, while the defect that decides the class covers a few pixels.
A model that averages the image down early sees a part, not its flaw.

Everything is drawn from signed distance functions over a pixel grid, so edges are
anti-aliased, any image size works, and a batch is rendered with a few numpy calls instead of a
loop per image. The parameters of every image, defects included, are drawn from the seed before
the labels are looked at, so the same seed and the same number of images give the same parts
whatever their labels: an "ok" image and a defective one differ only where the defect is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np
from scipy import ndimage

from ctloop.images import ImageSet
from ctloop.simulator import DigitsSplit, stratified_line_split

__all__ = ["PART_CLASSES", "OK_CLASS", "parts_images", "parts_split", "with_ok_share"]

PART_CLASSES: tuple[str, ...] = ("ok", "scratch", "hole", "crack", "chipped")
_OK, _SCRATCH, _HOLE, _CRACK, _CHIPPED = range(len(PART_CLASSES))
OK_CLASS = PART_CLASSES[_OK]  # a good part: the monitor's pass rate (yield_mode pass_rate) counts these

_REFERENCE_SIZE = 32  # sizes in pixels below are for 32x32 images and scale with the image
# Parts stay within 0.35 of the side from the centre, so that the camera shift of ctloop.drift at
# severity 1 (15 % of the side, plus rotation) leaves the whole part, and its defect, in view.
_MAX_EXTENT = 0.35
_CHUNK = 256  # images rendered at once; bounds memory at large image sizes
_CRACK_SEGMENTS = 3
_FAR = 1e3  # a distance no pixel is within: "no bore", "no chip"

T = TypeVar("T")


@dataclass(frozen=True)
class _Parts:
    """Per-image part and belt parameters, each an (n,) array; lengths in pixels, angles in rad.

    Every part is a rounded rectangle (half sides a, b, corner radius rc) in its own rotated
    frame; a disc is the special case a = b = rc.
    """

    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    a: np.ndarray
    b: np.ndarray
    rc: np.ndarray
    bore: np.ndarray  # radius of a central bore, -_FAR for none; over twice a hole's radius
    turned: np.ndarray  # 1.0: concentric turning marks (discs), 0.0: straight milling marks
    surface: np.ndarray
    gradient_u: np.ndarray
    gradient_v: np.ndarray
    marks_period: np.ndarray
    marks_phase: np.ndarray
    belt: np.ndarray
    stripe_period: np.ndarray


@dataclass(frozen=True)
class _Defects:
    """Per-image geometry of every defect kind, in the part's frame; an image shows at most one.

    scratch and crack are polylines (n, points, 2); hole is a centre (n, 2) and a radius.
    """

    scratch: np.ndarray
    scratch_gain: np.ndarray
    crack: np.ndarray
    crack_depth: np.ndarray
    line_width: np.ndarray
    hole: np.ndarray
    hole_radius: np.ndarray
    chip_angle: np.ndarray
    chip_depth: np.ndarray
    chip_phase: np.ndarray


def parts_split(seed: int = 0, image_size: int = 32, per_class: int = 600) -> DigitsSplit:
    """Generate `per_class` parts of each class and split them 50/20/30 per class.

    Args:
        seed: decides every image and the split.
        image_size: side of the square images in pixels (32 to 128 are sensible).
        per_class: images per class before the split; every part gets every class.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 10:
        raise ValueError(f"per_class must be an integer >= 10 (each part needs each class), got {per_class!r}")
    rng = np.random.default_rng([seed, 0])
    labels = rng.permutation(np.repeat(np.arange(len(PART_CLASSES), dtype=np.int64), per_class))
    everything = ImageSet(parts_images(labels, image_size, seed), labels, PART_CLASSES)
    return stratified_line_split(everything, seed)


def with_ok_share(pool: ImageSet, ok_share: float, seed: int = 0) -> ImageSet:
    """The pool as a line meets it: every OK part, and just enough defective parts, the same number
    of each defect class as far as the pool has them, for OK parts to be `ok_share` of the result.

    parts_split is balanced (a fifth of the parts OK), which suits training but not a pass rate:
    a real line passes most of its parts.

    Args:
        pool: parts of every class of PART_CLASSES (e.g. parts_split's production pool).
        ok_share: the share of OK parts wanted, in (0, 1).
        seed: decides which defective parts are kept.
    """
    if not 0.0 < ok_share < 1.0:
        raise ValueError(f"ok_share must be in (0, 1), got {ok_share!r}")
    ok = np.flatnonzero(pool.labels == _OK)
    if len(ok) == 0:
        raise ValueError(f"the pool has no {OK_CLASS!r} part")
    rng = np.random.default_rng([seed, 3])
    per_class = max(1, round(len(ok) * (1.0 - ok_share) / ok_share / (len(PART_CLASSES) - 1)))
    defective = [rng.permutation(np.flatnonzero(pool.labels == label))[:per_class]
                 for label in range(len(PART_CLASSES)) if label != _OK]
    return pool.subset(np.sort(np.concatenate([ok, *defective])))


def parts_images(labels: np.ndarray, image_size: int = 32, seed: int = 0) -> np.ndarray:
    """Render one part per label (an index into PART_CLASSES): float32 (N, S, S) in [0, 1].

    Args:
        labels: the class of each image; image i shows the defect of class labels[i].
        image_size: side S of the square images in pixels.
        seed: decides everything but the labels, so relabelling an image changes its defect only.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (len(labels) and not 0 <= labels.min() <= labels.max() < len(PART_CLASSES)):
        raise ValueError(f"labels must be a 1-d array of class ids in [0, {len(PART_CLASSES) - 1}]")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16 pixels, got {image_size!r}")
    rng = np.random.default_rng([seed, 1])
    parts = _draw_parts(rng, len(labels), image_size)
    defects = _draw_defects(rng, parts, image_size)
    out = np.empty((len(labels), image_size, image_size), np.float32)
    for chunk, start in enumerate(range(0, len(labels), _CHUNK)):
        window = slice(start, start + _CHUNK)
        noise_rng = np.random.default_rng([seed, 2, chunk])
        out[window] = _render(_take(parts, window), _take(defects, window), labels[window], image_size, noise_rng)
    return out


def _take(params: T, window: slice | np.ndarray) -> T:
    """The same parameters for the images in `window` only."""
    return type(params)(**{field.name: getattr(params, field.name)[window] for field in fields(params)})


def _draw_parts(rng: np.random.Generator, n: int, size: int) -> _Parts:
    """Discs (washers, half with a bore) and rounded plates, each in its own pose and finish."""
    disc = rng.random(n) < 0.5
    bored = disc & (rng.random(n) < 0.5)
    # A washer is larger, so that a hole still fits between its bore and its rim.
    half = np.where(bored, rng.uniform(0.25, 0.29, n), rng.uniform(0.22, 0.28, n)) * size
    a = half
    b = np.where(disc, half, half * rng.uniform(0.8, 1.0, n))
    rc = np.where(disc, half, b * rng.uniform(0.2, 0.45, n))
    extent = np.hypot(a - rc, b - rc) + rc
    jitter = np.maximum(_MAX_EXTENT * size - extent, 0.0) * np.sqrt(rng.random(n))
    direction = rng.uniform(0.0, 2 * np.pi, n)
    centre = (size - 1) / 2
    scale = size / _REFERENCE_SIZE
    return _Parts(
        cx=centre + jitter * np.cos(direction),
        cy=centre + jitter * np.sin(direction),
        angle=rng.uniform(0.0, 2 * np.pi, n),
        a=a,
        b=b,
        rc=rc,
        bore=np.where(bored, half * rng.uniform(0.33, 0.42, n), -_FAR),
        turned=disc.astype(np.float64),
        surface=rng.uniform(0.45, 0.7, n),
        gradient_u=rng.uniform(-0.08, 0.08, n),
        gradient_v=rng.uniform(-0.08, 0.08, n),
        marks_period=rng.uniform(1.5, 3.0, n) * scale,
        marks_phase=rng.uniform(0.0, 2 * np.pi, n),
        belt=rng.uniform(0.1, 0.3, n),
        stripe_period=rng.uniform(3.0, 6.0, n) * scale,
    )


def _draw_defects(rng: np.random.Generator, parts: _Parts, size: int) -> _Defects:
    """One of each defect for every image, placed on the part's material, clear of the bore."""
    n = len(parts.a)
    scale = size / _REFERENCE_SIZE
    inner = np.minimum(parts.a, parts.b)
    hole_radius = rng.uniform(1.0, 1.6, n) * scale
    low = np.maximum(parts.bore, 0.0) + hole_radius + 0.8 * scale
    high = np.maximum(inner - hole_radius - 1.2 * scale, low)
    return _Defects(
        scratch=_scratch(rng, inner),
        scratch_gain=rng.uniform(0.3, 0.45, n),
        crack=_crack(rng, inner),
        crack_depth=rng.uniform(0.55, 0.8, n),
        line_width=rng.uniform(0.8, 1.1, n),
        hole=_polar(rng.uniform(low, high), rng.uniform(0.0, 2 * np.pi, n)),
        hole_radius=hole_radius,
        chip_angle=_corner_angle(rng, parts),
        chip_depth=rng.uniform(0.25, 0.4, n) * inner,
        chip_phase=rng.uniform(0.0, 2 * np.pi, n),
    )


def _polar(radius: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Points (n, 2) as (u, v) from polar coordinates."""
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def _scratch(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """A straight segment (n, 2, 2) anywhere on the part; the part's outline clips it."""
    n = len(inner)
    middle = _polar(rng.uniform(0.0, 0.5, n) * inner, rng.uniform(0.0, 2 * np.pi, n))
    half = _polar(rng.uniform(0.45, 0.7, n) * inner, rng.uniform(0.0, np.pi, n))
    return np.stack([middle - half, middle + half], axis=1)


def _crack(rng: np.random.Generator, inner: np.ndarray) -> np.ndarray:
    """A jagged polyline (n, segments + 1, 2) that starts near the rim and runs inward."""
    n = len(inner)
    start_angle = rng.uniform(0.0, 2 * np.pi, n)
    start = _polar(0.85 * inner, start_angle)
    turns = rng.uniform(-0.7, 0.7, (n, _CRACK_SEGMENTS)) + rng.uniform(-0.4, 0.4, n)[:, None]
    headings = start_angle[:, None] + np.pi + np.cumsum(turns, axis=1)
    steps = _polar((rng.uniform(0.6, 0.9, n) * inner / _CRACK_SEGMENTS)[:, None], headings)
    return np.concatenate([start[:, None], start[:, None] + np.cumsum(steps, axis=1)], axis=1)


def _corner_angle(rng: np.random.Generator, parts: _Parts) -> np.ndarray:
    """Where a chip is knocked off: towards a corner of a plate (any direction of a disc)."""
    n = len(parts.a)
    signs = rng.choice([-1.0, 1.0], (2, n))
    return np.arctan2(signs[1] * parts.b, signs[0] * parts.a) + rng.uniform(-0.3, 0.3, n)


def _render(parts: _Parts, defects: _Defects, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The belt, the part's shadow, the part with its finish and defect, and a little sensor noise."""
    u, v = _frame(parts, size, 0.0)
    chipped = (labels == _CHIPPED)[:, None, None]
    distance = np.maximum(_outline(parts, u, v), _bore(parts, u, v))
    distance = np.where(chipped, np.maximum(distance, _chip(parts, defects, u, v)), distance)
    material = np.clip(0.5 - distance, 0.0, 1.0)
    surface = _finish(parts, u, v, distance)
    surface = _apply_defects(surface, defects, labels, u, v)
    image = _belt(parts, size, rng) * (1.0 - material) + surface * material
    image += rng.normal(0.0, 0.012, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _frame(parts: _Parts, size: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) in each part's rotated frame, (n, S, S); `offset` moves the part."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dx = cols[None] - (parts.cx + offset)[:, None, None]
    dy = rows[None] - (parts.cy + offset)[:, None, None]
    cos, sin = np.cos(parts.angle)[:, None, None], np.sin(parts.angle)[:, None, None]
    return cos * dx + sin * dy, cos * dy - sin * dx


def _outline(parts: _Parts, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to the rounded rectangle's outline, negative inside."""
    a, b, rc = (value[:, None, None] for value in (parts.a, parts.b, parts.rc))
    qu, qv = np.abs(u) - (a - rc), np.abs(v) - (b - rc)
    return np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0)) + np.minimum(np.maximum(qu, qv), 0.0) - rc


def _bore(parts: _Parts, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance that is positive inside the central bore (where there is no material)."""
    return parts.bore[:, None, None] - np.hypot(u, v)


def _chip(parts: _Parts, defects: _Defects, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to a ragged cut across the rim, positive on the side knocked off."""
    nu, nv = np.cos(defects.chip_angle)[:, None, None], np.sin(defects.chip_angle)[:, None, None]
    a, b, rc = (value[:, None, None] for value in (parts.a, parts.b, parts.rc))
    reach = np.abs(nu) * (a - rc) + np.abs(nv) * (b - rc) + rc  # the outline's furthest point along n
    along = u * nu + v * nv
    ragged = 0.4 * np.sin(1.7 * (v * nu - u * nv) + defects.chip_phase[:, None, None])
    return along + ragged - (reach - defects.chip_depth[:, None, None])


def _finish(parts: _Parts, u: np.ndarray, v: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Metal surface: brightness, a lighting gradient, faint machining marks, a darker bevel."""
    p = {field.name: getattr(parts, field.name)[:, None, None] for field in fields(parts)}
    span = p["a"] + p["b"]
    tone = p["surface"] + (p["gradient_u"] * u + p["gradient_v"] * v) / span
    track = np.where(p["turned"] > 0.5, np.hypot(u, v), u)
    marks = 0.025 * np.sin(2 * np.pi * track / p["marks_period"] + p["marks_phase"])
    bevel = 0.1 * np.clip(1.0 + distance / 1.5, 0.0, 1.0)
    return tone + marks - bevel


def _apply_defects(
    surface: np.ndarray, defects: _Defects, labels: np.ndarray, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Draw each image's defect: a bright scratch, a dark crack, a dark hole (a chip is a cut)."""
    surface = surface.copy()
    for kind, draw in ((_SCRATCH, _draw_scratch), (_CRACK, _draw_crack), (_HOLE, _draw_hole)):
        chosen = np.flatnonzero(labels == kind)
        if len(chosen):
            picked = _take(defects, chosen)
            surface[chosen] = draw(surface[chosen], picked, u[chosen], v[chosen])
    return surface


def _draw_scratch(surface: np.ndarray, defects: _Defects, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A polished groove catches the light: a 1-px bright line."""
    width = defects.line_width[:, None, None]
    line = np.clip(1.0 - _polyline_distance(defects.scratch, u, v) / width, 0.0, 1.0)
    return surface + defects.scratch_gain[:, None, None] * line


def _draw_crack(surface: np.ndarray, defects: _Defects, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A fracture is a dark, thin, jagged line (thinner than a scratch)."""
    width = defects.line_width[:, None, None]
    line = np.clip(1.0 - _polyline_distance(defects.crack, u, v) / (0.8 * width), 0.0, 1.0)
    return surface * (1.0 - defects.crack_depth[:, None, None] * line)


def _draw_hole(surface: np.ndarray, defects: _Defects, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A pit a few pixels across, dark because little light reaches its bottom."""
    distance = np.hypot(u - defects.hole[:, 0, None, None], v - defects.hole[:, 1, None, None])
    inside = np.clip(defects.hole_radius[:, None, None] + 0.5 - distance, 0.0, 1.0)
    return surface * (1.0 - 0.8 * inside)


def _polyline_distance(points: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the polyline through `points` (n, k, 2), (n, S, S)."""
    nearest = np.full(u.shape, np.inf)
    for start, stop in zip(points.transpose(1, 0, 2)[:-1], points.transpose(1, 0, 2)[1:]):
        su, sv = start[:, 0, None, None], start[:, 1, None, None]
        du, dv = (stop - start)[:, 0, None, None], (stop - start)[:, 1, None, None]
        t = np.clip(((u - su) * du + (v - sv) * dv) / np.maximum(du**2 + dv**2, 1e-9), 0.0, 1.0)
        nearest = np.minimum(nearest, np.hypot(u - su - t * du, v - sv - t * dv))
    return nearest


def _belt(parts: _Parts, size: int, rng: np.random.Generator) -> np.ndarray:
    """A dark rubber belt: its own brightness, woven cross stripes, blotchy wear, the part's shadow."""
    n = len(parts.a)
    rows = np.arange(size, dtype=np.float64)[None, :, None]
    stripes = 0.02 * np.sin(2 * np.pi * rows / parts.stripe_period[:, None, None])
    scale = size / _REFERENCE_SIZE
    wear = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0.0, scale, scale))
    belt = parts.belt[:, None, None] + stripes + 0.06 * wear
    u, v = _frame(parts, size, 1.2 * scale)
    shadow = np.clip((2.0 * scale - _outline(parts, u, v)) / (4.0 * scale), 0.0, 1.0)
    return belt * (1.0 - 0.4 * shadow)
