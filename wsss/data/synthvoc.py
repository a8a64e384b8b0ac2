"""SynthVOC: a procedural dataset in PASCAL VOC 2012 layout that plants the failure modes of WSSS.

See the design note `design/synthvoc.md`. Every image is rendered from its own generator
`np.random.default_rng([seed, index])`, so files are byte-identical across runs and independent of
generation order. Shapes are drawn with vectorized implicit functions on a pixel-centre grid; the
same boolean masks produce the image, the ground truth, the saliency map and the context map, so
they agree exactly.

Planted phenomena (each behind a `SynthConfig` knob):
- shape-defined classes: fill textures come from one pool shared by classes and background;
- discriminative parts: `horned` and `tailed` share a body and differ by a part of ~8% area;
- co-occurring context: `train` sits on a "rail" band, `boat` on "water"; context is background;
- intra-object edges: most objects are split into two strongly contrasting textures;
- clutter: textured backgrounds and distractor shapes of no class;
- saliency bias: blurred foreground that misses small objects and fires on distractors.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from wsss.paths import data_dir, portable
from wsss.io import (IGNORE_INDEX, exclusive, load_label_dict, save_gray_png, save_jpeg, save_label_png, save_npy,
                     write_json, write_text)

GENERATOR_VERSION = "synthvoc-1"

CLASS_NAMES: tuple[str, ...] = ("disk", "square", "triangle", "cross", "train", "boat", "horned", "tailed")
NUM_CLASSES = len(CLASS_NAMES)
PART_DEFINED: tuple[str, ...] = ("horned", "tailed")
CONTEXT_OF: dict[str, str] = {"train": "rail", "boat": "water"}
# ContextMasks value of each context kind: the label of the class it co-occurs with
CONTEXT_LABEL: dict[str, int] = {kind: CLASS_NAMES.index(cls) + 1 for cls, kind in CONTEXT_OF.items()}
DISTRACTORS: tuple[str, ...] = ("ring", "crescent", "zigzag", "star")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Artifacts this generator owns inside a root; only these are ever deleted (on overwrite or when
# restarting an interrupted run), so pointing --out at a folder with other content is safe.
_DIRS = ("JPEGImages", "SegmentationClass", "SaliencyMaps", "ContextMasks", "ImageSets")
_FILES = ("cls_labels.npy", "labels.txt", "meta.json")
# Written before the first image and removed after meta.json: tells an interrupted SynthVOC run
# (safe to wipe and redo) from a foreign folder such as a real VOC tree (never wiped silently).
_INCOMPLETE = ".synthvoc-incomplete"


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Geometric sizes are fractions of `image_size` unless noted."""

    image_size: int = 96
    n_train: int = 1500
    n_val: int = 300
    n_test: int = 100
    # objects: count per image, extent (fraction of the image side, log-uniform), occlusion
    min_objects: int = 1
    max_objects: int = 3
    min_object_scale: float = 0.25
    max_object_scale: float = 0.7
    max_occlusion: float = 0.5  # a new object may hide at most this share of an earlier one
    max_tilt_deg: float = 12.0  # rotation of part-defined shapes (others: any angle; train/boat: none)
    # co-occurring context (rail under train, water under boat)
    p_context: float = 0.9
    p_context_alone: float = 0.06  # per image: a context region without its object
    # intra-object edges
    p_two_tone: float = 0.7
    min_tone_contrast: float = 0.3  # luminance gap (0..1) between the two tones of an object
    # texture pool and clutter
    texture_contrast: float = 0.3  # per-channel spread between the two colours of one texture
    texture_period: tuple[float, float] = (0.04, 0.12)
    min_fg_bg_contrast: float = 0.3  # RGB distance (0..1 scale) of an object's mean colour to what it covers
    n_distractors: tuple[int, int] = (0, 3)
    pixel_noise: float = 0.02
    # simulated saliency detector
    saliency_blur_sigma: float = 1.5  # pixels
    saliency_small_scale: float = 0.35  # objects below this extent count as "small"
    p_saliency_miss_small: float = 0.4
    p_saliency_fire_distractor: float = 0.3
    saliency_noise: float = 0.04
    # output
    ignore_band: int = 1  # pixels of void (255) outside each object instance, as VOC
    jpeg_quality: int = 95
    # VOC's image shapes (`VOC_SHAPES`): each image cut from its square render with the long side kept
    # and the short one drawn as VOC's are, in both orientations; False: square images
    voc_sizes: bool = False
    # length of the horn and the tail (the discriminative parts) relative to the default (~8% of the
    # creature's area at 1): the knob of the part-size dose-response sweep
    part_scale: float = 1.0

    def __post_init__(self) -> None:
        probs = ("p_context", "p_context_alone", "p_two_tone", "p_saliency_miss_small", "p_saliency_fire_distractor")
        for name in probs:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if min(self.n_train, self.n_val, self.n_test) < 0:
            raise ValueError("split sizes must be >= 0")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not 0.0 < self.min_object_scale <= self.max_object_scale <= 1.0:
            raise ValueError("need 0 < min_object_scale <= max_object_scale <= 1")
        for name in ("n_distractors", "texture_period"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high")
        if not 0.0 < self.part_scale <= 2.0:
            raise ValueError(f"part_scale must lie in (0, 2], got {self.part_scale}")
        if self.ignore_band < 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need ignore_band >= 0 and 1 <= jpeg_quality <= 100")

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(image_size=64, n_train=48, n_val=16, n_test=8, saliency_blur_sigma=1.0),
    "quick": SynthConfig(),
    "full": SynthConfig(image_size=256, n_train=10000, n_val=1449, n_test=1456, saliency_blur_sigma=4.0, ignore_band=3,
                        voc_sizes=True),
}

# PASCAL VOC 2012's common image shapes as (short side / long side, share of images), long side
# 500 px: 500x375 dominates, then 500x333, 500x281, 500x366, 500x400 and squares; about a quarter
# of the images are portraits. Approximate shares of the trainval set.
VOC_SHAPES: tuple[tuple[float, float], ...] = (
    (375 / 500, 0.55), (333 / 500, 0.2), (281 / 500, 0.07), (366 / 500, 0.07), (400 / 500, 0.06), (1.0, 0.05))
VOC_PORTRAIT_SHARE = 0.25


def make_config(preset: str = "quick", **overrides: Any) -> SynthConfig:
    """A preset with some fields replaced; unknown presets or fields raise ValueError naming the valid ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    fields = [f.name for f in dataclasses.fields(SynthConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown SynthConfig field(s) {unknown}; valid fields: {', '.join(fields)}")
    # JSON round trips turn tuples into lists; keep the dataclass canonical so meta comparisons hold
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(PRESETS[preset], **overrides)


def default_root(preset: str, seed: int) -> Path:
    return data_dir() / f"synthvoc-{preset}-s{seed}"


def image_id(index: int) -> str:
    return f"synth_{index:06d}"


# ----------------------------------------------------------------------------------------------
# Geometry: shapes as implicit functions of object-local coordinates (u, v), unit = object extent,
# v pointing down. Every shape fits roughly in [-0.5, 0.5]^2 before rotation.


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size) float32."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


def _local(size: int, cx: float, cy: float, scale: float, angle: float, flip: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _grid(size)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    return flip * (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale


def _rect(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _convex(u: np.ndarray, v: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Inside a convex polygon: on the same side of every edge (either winding)."""
    pos = np.ones(u.shape, dtype=bool)
    neg = np.ones(u.shape, dtype=bool)
    for (u0, v0), (u1, v1) in zip(verts, verts[1:] + verts[:1]):
        cross = (u1 - u0) * (v - v0) - (v1 - v0) * (u - u0)
        pos &= cross >= 0
        neg &= cross <= 0
    return pos | neg


def _polyline(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]], half_width: float) -> np.ndarray:
    out = np.zeros(u.shape, dtype=bool)
    for (u0, v0), (u1, v1) in zip(pts, pts[1:]):
        du, dv = u1 - u0, v1 - v0
        t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
        out |= (u - u0 - t * du) ** 2 + (v - v0 - t * dv) ** 2 <= half_width**2
    return out


# horned/tailed: one body, and a part of ~8% of the object's area that alone tells them apart
_CREATURE_BODY = (0.0, 0.06, 0.38, 0.24)  # ellipse centre u, v and radii
_HORN = [(0.04, -0.12), (0.22, -0.12), (0.13, -0.47)]
_TAIL = (0.30, 0.62, 0.02, 0.125)


def _class_shape(name: str, u: np.ndarray, v: np.ndarray, part_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(full mask, part mask); the part is non-empty only for part-defined classes, its length
    `part_scale` times the default (horn from its base up, tail from the body out)."""
    none = np.zeros(u.shape, dtype=bool)
    if name == "disk":
        return u * u + v * v <= 0.25, none
    if name == "square":
        return (np.abs(u) <= 0.36) & (np.abs(v) <= 0.36), none
    if name == "triangle":
        return _convex(u, v, [(0.0, -0.5), (0.433, 0.25), (-0.433, 0.25)]), none
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.5) & (av <= 0.16)) | ((au <= 0.16) & (av <= 0.5)), none
    if name == "train":  # locomotive: boiler, cab, chimney, four wheels
        m = _rect(u, v, -0.5, 0.5, -0.10, 0.16) | _rect(u, v, 0.12, 0.42, -0.32, -0.10)
        m |= _rect(u, v, -0.36, -0.26, -0.24, -0.10)
        for wu in (-0.36, -0.12, 0.12, 0.36):
            m |= (u - wu) ** 2 + (v - 0.18) ** 2 <= 0.075**2
        return m, none
    if name == "boat":  # hull, mast, main sail, jib
        m = _convex(u, v, [(-0.5, 0.02), (0.5, 0.02), (0.32, 0.24), (-0.32, 0.24)])
        m |= _rect(u, v, -0.025, 0.025, -0.46, 0.02)
        m |= _convex(u, v, [(0.05, -0.42), (0.05, -0.03), (0.38, -0.03)])
        m |= _convex(u, v, [(-0.05, -0.34), (-0.05, -0.03), (-0.28, -0.03)])
        return m, none
    if name in PART_DEFINED:
        body = _ellipse(u, v, *_CREATURE_BODY)
        horn, tail = _HORN, _TAIL
        if part_scale != 1.0:
            horn = [*_HORN[:2], (_HORN[2][0], _HORN[0][1] + part_scale * (_HORN[2][1] - _HORN[0][1]))]
            tail = (_TAIL[0], _TAIL[0] + part_scale * (_TAIL[1] - _TAIL[0]), *_TAIL[2:])
        part = _convex(u, v, horn) if name == "horned" else _rect(u, v, *tail)
        part &= ~body
        return body | part, part
    raise ValueError(f"unknown class {name!r}")


# Unrotated extents (left, right, top, bottom) in object units, used to keep objects in frame.
_EXTENT: dict[str, tuple[float, float, float, float]] = {
    "train": (0.5, 0.5, 0.32, 0.255),
    "boat": (0.5, 0.5, 0.46, 0.24),
    "horned": (0.62, 0.62, 0.47, 0.30),
    "tailed": (0.62, 0.62, 0.47, 0.30),
}
_ROUND_EXTENT = (0.5, 0.5, 0.5, 0.5)  # freely rotated shapes fit in the unit-diameter circle


def shape_masks(
    name: str, size: int, cx: float, cy: float, scale: float, angle: float = 0.0, flip: int = 1,
    part_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize class `name` on a size x size grid: (object mask, discriminative-part mask).

    `scale` is the object extent in pixels, `angle` a rotation in radians, `flip` = -1 mirrors it.
    For `horned`/`tailed` the part mask holds the horn/tail pixels outside the shared body.
    """
    u, v = _local(size, cx, cy, scale, angle, flip)
    return _class_shape(name, u, v, part_scale)


def _distractor_shape(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    if name == "ring":
        return (r2 <= 0.25) & (r2 >= 0.3**2)
    if name == "crescent":
        return (r2 <= 0.25) & ((u - 0.2) ** 2 + v * v > 0.42**2)
    if name == "zigzag":
        return _polyline(u, v, [(-0.5, 0.2), (-0.17, -0.2), (0.17, 0.2), (0.5, -0.2)], 0.06)
    if name == "star":  # five points: radius interpolates between inner and outer along each arm
        t = np.abs(((np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a tip, 0 between
        return np.sqrt(r2) <= 0.2 + 0.3 * t
    raise ValueError(f"unknown distractor {name!r}")


# ----------------------------------------------------------------------------------------------
# Appearance: one texture pool for every object and the background; fixed-look context textures.

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _pool_texture(rng: np.random.Generator, cfg: SynthConfig, region: np.ndarray) -> np.ndarray:
    """Colours (N, 3) of a random texture at the N pixels of boolean `region` (only those are computed):
    solid, stripes, checkerboard, dots or smooth noise, at a random angle and period."""
    size = cfg.image_size
    xs, ys = (g[region] for g in _grid(size))
    base = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    other = np.clip(base + rng.uniform(-cfg.texture_contrast, cfg.texture_contrast, 3), 0.0, 1.0).astype(np.float32)
    kind = rng.integers(5)
    if kind == 0:
        return np.broadcast_to(base, (xs.size, 3))
    if kind == 4:  # smooth noise: a coarse random grid, bilinearly interpolated
        n = int(rng.integers(3, 9))
        coarse = rng.random((n, n), dtype=np.float32)
        gx, gy = (np.clip(g * (n / size) - 0.5, 0.0, n - 1.0) for g in (xs, ys))
        x0, y0 = np.minimum(gx.astype(np.intp), n - 2), np.minimum(gy.astype(np.intp), n - 2)
        fx, fy = gx - x0, gy - y0
        t = ((coarse[y0, x0] * (1 - fx) + coarse[y0, x0 + 1] * fx) * (1 - fy)
             + (coarse[y0 + 1, x0] * (1 - fx) + coarse[y0 + 1, x0 + 1] * fx) * fy)
        return base + (other - base) * t[:, None]
    period = size * rng.uniform(*cfg.texture_period)
    angle = rng.uniform(0.0, np.pi)
    a = (math.cos(angle) * xs + math.sin(angle) * ys) / period
    b = (-math.sin(angle) * xs + math.cos(angle) * ys) / period
    if kind == 1:
        on = (a % 1.0) < 0.5
    elif kind == 2:
        on = (np.floor(a) + np.floor(b)) % 2 == 0
    else:
        on = ((a % 1.0) - 0.5) ** 2 + ((b % 1.0) - 0.5) ** 2 < 0.09
    return np.where(on[:, None], other, base)


def _rail_texture(rng: np.random.Generator, size: int, top: float, height: float) -> np.ndarray:
    """Ballast with dark sleepers and two bright rails: a ladder whose proportions follow the band height."""
    xs, ys = _grid(size)
    jitter = rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    tex = np.empty((size, size, 3), dtype=np.float32)
    tex[:] = np.array([0.45, 0.42, 0.38], dtype=np.float32) + jitter
    rel = (ys - top) / height  # 0..1 across the band
    period = max(3.0, 0.7 * height)
    sleeper = ((xs - rng.uniform(0, period)) % period < 0.4 * period) & (rel > 0.1) & (rel < 0.9)
    tex[sleeper] = np.array([0.32, 0.19, 0.08], dtype=np.float32) + jitter
    half = max(0.5, 0.09 * height)
    rails = (np.abs(ys - (top + 0.28 * height)) <= half) | (np.abs(ys - (top + 0.72 * height)) <= half)
    tex[rails] = np.array([0.82, 0.82, 0.86], dtype=np.float32)
    return tex


def _water_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blue water with bright wavy crests on an image-relative wavelength, so it always looks alike."""
    xs, ys = _grid(size)
    jitter = rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    phase = 2 * np.pi * (ys / (0.07 * size) + 0.35 * np.sin(2 * np.pi * xs / (0.25 * size) + rng.uniform(0, 2 * np.pi)))
    crest = np.sin(phase) > 0.6
    return np.where(
        crest[..., None],
        np.array([0.6, 0.78, 0.95], dtype=np.float32) + jitter,
        np.array([0.10, 0.30, 0.62], dtype=np.float32) + jitter,
    )


def _tone_regions(rng: np.random.Generator, cfg: SynthConfig, mask: np.ndarray, scale: float,
                  centre: tuple[float, float]) -> list[np.ndarray]:
    """With p_two_tone, split `mask` by a line near its centre or into 3-4 parallel bands."""
    if rng.random() >= cfg.p_two_tone:
        return [mask]
    xs, ys = _grid(cfg.image_size)
    angle = rng.uniform(0.0, np.pi)
    d = (math.cos(angle) * (xs - centre[0]) + math.sin(angle) * (ys - centre[1])) / scale
    if rng.random() < 0.5:
        side = d < rng.uniform(-0.15, 0.15)
    else:
        side = np.floor((d + 0.5) * rng.integers(3, 5)) % 2 == 0
    return [r for r in (mask & side, mask & ~side) if r.any()]


def _paint(canvas: np.ndarray, regions: list[np.ndarray], rng: np.random.Generator, cfg: SynthConfig) -> None:
    """Fill each region with a pool texture that stands out from what lies beneath it and from the
    other regions (luminance gap), so objects are visible and two-tone objects have strong inner edges."""
    under = canvas[np.logical_or.reduce(regions)].mean(axis=0)
    means: list[np.ndarray] = []
    for region in regions:
        best, best_score = None, -np.inf
        for _ in range(10):  # a fixed budget of rejection sampling keeps the output deterministic
            tex = _pool_texture(rng, cfg, region)
            mean = tex.mean(axis=0)
            ratios = [float(np.linalg.norm(mean - under)) / max(cfg.min_fg_bg_contrast, 1e-6)]
            ratios += [abs(float(_LUMA @ (mean - m))) / max(cfg.min_tone_contrast, 1e-6) for m in means]
            score = min(ratios)
            if score > best_score:
                best, best_score = tex, score
            if score >= 1.0:
                break
        assert best is not None
        canvas[region] = best
        means.append(best.mean(axis=0))


# ----------------------------------------------------------------------------------------------
# One sample


@dataclass(frozen=True)
class SynthSample:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8: 0 background, 1..K classes, 255 ignore
    saliency: np.ndarray  # (H, W) uint8
    context: np.ndarray  # (H, W) uint8: class index of the context region a pixel belongs to, else 0
    classes: np.ndarray  # (K,) float32 multi-hot of the classes present in `label`
    parts: np.ndarray  # (H, W) bool: visible discriminative parts (horn, tail) of part-defined objects


@dataclass(frozen=True)
class Probe:
    """A conflict or intervention split (`PROBES`): how its images depart from the training
    distribution. The first object's class cycles through `first`; the others are drawn from
    `others`. `context`: "own" (as in training), "none" (never a context region), "swapped" (each
    context object on the other's context: a train on water, a boat on rails) or "alone" (a context
    region in every image, its object never present). `part`: what happens to the horn or tail of
    every part-defined object (its label stays): "kept", "removed" (what lay beneath shows
    instead) or "moved" (to the far side of the body, mirrored through the body's centroid). `scene`: the probe whose generator draws this one's scenes, so that its images are
    that probe's, intervened on, pixel for pixel (without `voc_sizes`, whose window follows the
    labels)."""

    first: tuple[str, ...]
    others: tuple[str, ...]
    context: str
    part: str = "kept"
    scene: str | None = None


_PLAIN = tuple(c for c in CLASS_NAMES if c not in CONTEXT_OF)
PROBES: dict[str, Probe] = {
    "object_alone": Probe(tuple(CONTEXT_OF), CLASS_NAMES, "none"),
    "swapped": Probe(tuple(CONTEXT_OF), _PLAIN, "swapped"),
    "context_alone": Probe(_PLAIN, _PLAIN, "alone"),
    "part_kept": Probe(PART_DEFINED, CLASS_NAMES, "own"),
    "part_removed": Probe(PART_DEFINED, CLASS_NAMES, "own", part="removed", scene="part_kept"),
    "part_moved": Probe(PART_DEFINED, CLASS_NAMES, "own", part="moved", scene="part_kept"),
}
SWAPPED_CONTEXT: dict[str, str] = {"train": "water", "boat": "rail"}


@dataclass
class _Placed:
    cls: int  # 0-based class index
    mask: np.ndarray
    scale: float
    cx: float
    cy: float
    with_context: bool
    part: np.ndarray


def _split_of(cfg: SynthConfig, index: int) -> tuple[str, int]:
    """(split, index within the split) of a global image index; splits are consecutive ranges."""
    start = 0
    for split, n in cfg.split_sizes.items():
        if index < start + n:
            return split, index - start
        start += n
    raise IndexError(f"image index {index} out of range ({start} images)")


def _place_objects(rng: np.random.Generator, cfg: SynthConfig, first_cls: int,
                   probe: Probe | None = None) -> list[_Placed]:
    size = cfg.image_size
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if probe is None:
        others = rng.integers(0, NUM_CLASSES, n - 1)
    else:
        others = rng.choice([CLASS_NAMES.index(c) for c in probe.others], n - 1)
    classes = [first_cls] + [int(c) for c in others]
    placed: list[_Placed] = []
    owner = np.zeros((size, size), dtype=np.int16)  # 1 + index of the object that shows at a pixel
    log_lo, log_hi = math.log(cfg.min_object_scale), math.log(cfg.max_object_scale)
    for cls in classes:
        name = CLASS_NAMES[cls]
        with_context = name in CONTEXT_OF and rng.random() < cfg.p_context
        if name in CONTEXT_OF:
            angle = 0.0  # upright, so the horizontal rail/water lies under them
        elif name in PART_DEFINED:
            angle = math.radians(rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg))
        else:
            angle = rng.uniform(0.0, 2 * np.pi)
        flip = 1 if rng.random() < 0.5 else -1
        left, right, top, bottom = _EXTENT.get(name, _ROUND_EXTENT)
        if name in PART_DEFINED and cfg.part_scale > 1.0:  # longer parts must stay in the frame too
            left = right = max(right, _TAIL[0] + cfg.part_scale * (_TAIL[1] - _TAIL[0]))
            top = max(top, -_HORN[0][1] - cfg.part_scale * (_HORN[2][1] - _HORN[0][1]))
        if with_context:
            bottom += 0.2  # room for the rail band / a strip of water below
        for _ in range(10):
            scale = size * math.exp(rng.uniform(log_lo, log_hi))
            cx = _uniform_in(rng, max(left, right) * scale, size - max(left, right) * scale, size)
            cy = _uniform_in(rng, top * scale, size - bottom * scale, size)
            mask, part = shape_masks(name, size, cx, cy, scale, angle, flip, cfg.part_scale)
            # later objects occlude earlier ones, but never hide most of one (its label would lie)
            hidden = [np.count_nonzero(mask & (owner == j + 1)) / max(np.count_nonzero(owner == j + 1), 1)
                      for j in range(len(placed))]
            if mask.any() and max(hidden, default=0.0) <= cfg.max_occlusion:
                owner[mask] = len(placed) + 1
                placed.append(_Placed(cls, mask, scale, cx, cy, with_context, part))
                break
    return placed


def _uniform_in(rng: np.random.Generator, lo: float, hi: float, size: int) -> float:
    """Uniform in [lo, hi]; an object too big for the frame is centred instead."""
    return float(rng.uniform(lo, hi)) if hi > lo else size / 2


def _context_region(rng: np.random.Generator, cfg: SynthConfig, kind: str, cx: float, y_top: float,
                    scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, texture) of a rail band or water region starting at y_top, much wider than the object."""
    size = cfg.image_size
    xs, ys = _grid(size)
    half_width = rng.uniform(1.2, 3.0) * scale
    across = np.abs(xs - cx) <= half_width
    if kind == "rail":
        height = max(4.0, 0.2 * scale)
        return across & (ys >= y_top) & (ys < y_top + height), _rail_texture(rng, size, y_top, height)
    depth = rng.uniform(0.5, 1.5) * scale
    return across & (ys >= y_top) & (ys < y_top + depth), _water_texture(rng, size)


def render_image(cfg: SynthConfig, seed: int, index: int, probe: str | None = None) -> SynthSample:
    """Render image `index` of the dataset defined by (cfg, seed), in memory; with `probe`, image
    `index` of that probe split (`PROBES`), drawn from a generator of its own."""
    if probe is None:
        spec = None
        local = _split_of(cfg, index)[1]
        rng = np.random.default_rng([seed, index])
        # cycling the first object's class through the split guarantees every class in every split
        first = local % NUM_CLASSES
    else:
        spec = PROBES[probe]
        rng = np.random.default_rng([seed, index, 2, list(PROBES).index(spec.scene or probe)])
        first = CLASS_NAMES.index(spec.first[index % len(spec.first)])
        cfg = dataclasses.replace(cfg, p_context={"none": 0.0, "own": cfg.p_context}.get(spec.context, 1.0),
                                  p_context_alone=1.0 if spec.context == "alone" else 0.0)
    size = cfg.image_size
    objects = _place_objects(rng, cfg, first, spec)
    edit = "kept" if spec is None else spec.part

    # textured background = clutter from the same pool as the objects
    canvas = _pool_texture(rng, cfg, np.ones((size, size), dtype=bool)).reshape(size, size, 3).copy()
    context = np.zeros((size, size), dtype=np.uint8)

    # context regions first (they are background), then distractors, then objects in depth order
    # kind, centre x, top y, scale, and the ContextMasks value: the class the context comes with, or
    # under a swapped context the class standing on it (so its spill onto the foreign context counts)
    contexts: list[tuple[str, float, float, float, int]] = []
    swapped = spec is not None and spec.context == "swapped"
    for obj in objects:
        name = CLASS_NAMES[obj.cls]
        if obj.with_context:
            bottom_v = _EXTENT[name][3]
            # the train's wheels stand on the rail; the boat's hull dips into the water
            y_top = obj.cy + (bottom_v - 0.02 if name == "train" else bottom_v - 0.1) * obj.scale
            kind = SWAPPED_CONTEXT[name] if swapped else CONTEXT_OF[name]
            contexts.append((kind, obj.cx, y_top, obj.scale, obj.cls + 1 if swapped else CONTEXT_LABEL[kind]))
    if rng.random() < cfg.p_context_alone:
        kind = ("rail", "water")[int(rng.integers(2))]
        scale = size * rng.uniform(cfg.min_object_scale, cfg.max_object_scale)
        contexts.append((kind, rng.uniform(0, size), rng.uniform(0.3 * size, 0.85 * size), scale,
                         CONTEXT_LABEL[kind]))
    for kind, cx, y_top, scale, value in contexts:
        region, tex = _context_region(rng, cfg, kind, cx, y_top, scale)
        canvas[region] = tex[region]
        context[region] = value

    distractor_masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(cfg.n_distractors[0], cfg.n_distractors[1] + 1))):
        name = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        scale = size * rng.uniform(cfg.min_object_scale, cfg.max_object_scale)
        u, v = _local(size, rng.uniform(0, size), rng.uniform(0, size), scale, rng.uniform(0, 2 * np.pi), 1)
        mask = _distractor_shape(name, u, v)
        if mask.any():
            _paint(canvas, [mask], rng, cfg)
            distractor_masks.append(mask)

    label = np.zeros((size, size), dtype=np.uint8)
    depth = np.zeros((size, size), dtype=np.int16)  # 1 + draw order of the object shown at a pixel
    parts = np.zeros((size, size), dtype=bool)
    # An intervened image is painted beside the intact scene, which alone draws the random numbers:
    # every texture and later object comes out as in the scene it is paired with.
    shown = canvas if edit == "kept" else canvas.copy()
    for i, obj in enumerate(objects):
        _paint(canvas, _tone_regions(rng, cfg, obj.mask, obj.scale, (obj.cx, obj.cy)), rng, cfg)
        if shown is not canvas:
            objects[i] = obj = _intervene_on_part(obj, edit, canvas, shown)
        label[obj.mask] = obj.cls + 1
        depth[obj.mask] = i + 1
        parts[obj.mask] = obj.part[obj.mask]  # a later object hides the parts it covers

    if cfg.pixel_noise > 0:
        shown = shown + rng.normal(0.0, cfg.pixel_noise, shown.shape).astype(np.float32)
    image = np.clip(np.rint(shown * 255.0), 0, 255).astype(np.uint8)

    saliency = _saliency(rng, cfg, objects, depth, distractor_masks)

    if cfg.ignore_band > 0:
        # void band just outside every instance (also between overlapping instances), as in VOC
        near_front = ndimage.maximum_filter(depth, size=2 * cfg.ignore_band + 1, mode="nearest")
        label[near_front > depth] = IGNORE_INDEX
    # context map: only pixels that show the context and are plain background in the ground truth
    context[label != 0] = 0
    for mask in distractor_masks:
        context[mask] = 0

    if cfg.voc_sizes:
        (top, left), (h, w) = _voc_window(np.random.default_rng([seed, index, 1]), size, label)
        image, label, saliency, context, parts = (a[top:top + h, left:left + w]
                                                  for a in (image, label, saliency, context, parts))
    parts &= (label > 0) & (label != IGNORE_INDEX)
    present = np.zeros(NUM_CLASSES, dtype=np.float32)
    for c in np.unique(label):
        if 0 < c <= NUM_CLASSES:
            present[c - 1] = 1.0
    image, label, saliency, context, parts = (np.ascontiguousarray(a) for a in (image, label, saliency, context, parts))
    return SynthSample(image, label, saliency, context, present, parts)


def _intervene_on_part(obj: _Placed, edit: str, scene: np.ndarray, shown: np.ndarray) -> _Placed:
    """Paint `obj` (just painted on the intact `scene`) on `shown` with its part removed or moved
    (`Probe.part`); returns the object as shown."""
    body = obj.mask & ~obj.part
    shown[body] = scene[body]
    if edit == "removed" or not obj.part.any():
        return dataclasses.replace(obj, mask=body, part=np.zeros_like(obj.part))
    if edit != "moved":
        raise ValueError(f"unknown part intervention {edit!r}")
    # Point reflection through the body's centroid: a horn on top now points down from the bottom,
    # a tail on the right leaves the body on the left; same shape, same texture (turned 180 degrees).
    ys, xs = np.nonzero(obj.part)
    by, bx = np.nonzero(body)
    ty, tx = round(2 * by.mean()) - ys, round(2 * bx.mean()) - xs
    inside = (ty >= 0) & (ty < scene.shape[0]) & (tx >= 0) & (tx < scene.shape[1])
    moved = np.zeros_like(obj.part)
    moved[ty[inside], tx[inside]] = True
    shown[ty[inside], tx[inside]] = scene[ys[inside], xs[inside]]
    return dataclasses.replace(obj, mask=body | moved, part=moved)


def _voc_window(rng: np.random.Generator, size: int, label: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, left), (height, width)) of a VOC-shaped window of a square render of `size` px: the
    shape drawn from `VOC_SHAPES` (a portrait with `VOC_PORTRAIT_SHARE`), the place the one of four
    random candidates that keeps the most object pixels (an image keeps at least its first object
    where possible; objects cut at the edge are VOC's truncated ones). A separate generator, so the
    square content is the same with or without VOC sizes."""
    ratios, shares = zip(*VOC_SHAPES)
    short = max(1, round(size * ratios[int(rng.choice(len(ratios), p=np.array(shares) / sum(shares)))]))
    h, w = (size, short) if rng.random() < VOC_PORTRAIT_SHARE else (short, size)
    objects = ((label > 0) & (label != IGNORE_INDEX)).astype(np.int64)
    counts = np.pad(objects, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # summed-area table
    candidates = [(int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))) for _ in range(4)]
    kept = [counts[t + h, l + w] - counts[t, l + w] - counts[t + h, l] + counts[t, l] for t, l in candidates]
    return candidates[int(np.argmax(kept))], (h, w)


def _saliency(rng: np.random.Generator, cfg: SynthConfig, objects: list[_Placed], depth: np.ndarray,
              distractors: list[np.ndarray]) -> np.ndarray:
    """A plausible salient-object detector: blurred objects, small ones sometimes missed, some distractors."""
    size = cfg.image_size
    fg = np.zeros((size, size), dtype=np.float32)
    for i, obj in enumerate(objects):
        strength = rng.uniform(0.75, 1.0)
        small = obj.scale < cfg.saliency_small_scale * size
        if not (small and rng.random() < cfg.p_saliency_miss_small):
            fg[depth == i + 1] = strength
    for mask in distractors:
        strength = rng.uniform(0.5, 1.0)
        if rng.random() < cfg.p_saliency_fire_distractor:
            visible = mask & (depth == 0)
            fg[visible] = np.maximum(fg[visible], strength)
    if cfg.saliency_blur_sigma > 0:
        fg = ndimage.gaussian_filter(fg, cfg.saliency_blur_sigma, mode="nearest")
    if cfg.saliency_noise > 0:
        fg = fg + rng.normal(0.0, cfg.saliency_noise, fg.shape).astype(np.float32)
    return np.clip(np.rint(fg * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Writing a dataset


# Settings added after datasets were first written; recorded only when changed from these values,
# so a dataset written before keeps its identity (and the runs cached on it).
_NEWER_DEFAULTS: dict[str, Any] = {"voc_sizes": False, "part_scale": 1.0}


def _meta(cfg: SynthConfig, preset: str, seed: int) -> dict[str, Any]:
    return {
        "generator": "wsss.data.synthvoc",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "params": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NEWER_DEFAULTS or v != _NEWER_DEFAULTS[k]},
        "counts": cfg.split_sizes,
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "phenomena": {
            "part_defined": list(PART_DEFINED),
            "context": dict(CONTEXT_OF),
            "context_label": dict(CONTEXT_LABEL),
            "distractors": list(DISTRACTORS),
        },
    }


def generate(out_dir: str | os.PathLike | None = None, preset: str = "quick", seed: int = 0, *,
             progress: bool = True, overwrite: bool = False, workers: int = 1, **overrides: Any) -> Path:
    """Write SynthVOC (VOC 2012 layout) to `out_dir` (default: `default_root(preset, seed)`); return the root.

    Cached: a root whose meta.json records the same generator version, seed and parameters is left
    untouched. A root holding a different dataset raises FileExistsError unless `overwrite`.
    `workers` processes render the images (the files are the same for any number).
    """
    cfg = make_config(preset, **overrides)
    root = Path(out_dir) if out_dir is not None else default_root(preset, seed)
    images = [(_split_of(cfg, i)[0], image_id(i), partial(render_image, cfg, seed, i))
              for i in range(sum(cfg.split_sizes.values()))]
    return _write_cached(root, _meta(cfg, preset, seed), images, {"trainval": ("train", "val")}, cfg,
                         f"SynthVOC {preset}", progress, overwrite, workers)


def probe_id(probe: str, index: int) -> str:
    return f"probe_{probe}_{index:06d}"


def probes_root(preset: str, seed: int) -> Path:
    return data_dir() / f"synthvoc-{preset}-s{seed}-probes"


def generate_probes(out_dir: str | os.PathLike | None = None, preset: str = "quick", seed: int = 0, *,
                    n: int | None = None, progress: bool = True, overwrite: bool = False,
                    **overrides: Any) -> Path:
    """Write the probe splits (`PROBES`, `n` images each, default the val split's size) of the
    dataset (preset, seed, overrides) in VOC layout, one image list per probe, to `out_dir` (default
    `probes_root(preset, seed)`); cached like `generate`. A model trained on the dataset is scored
    on them by `wsss.analysis.probes`."""
    cfg = make_config(preset, **overrides)
    n = cfg.n_val if n is None else n
    if n < 1:
        raise ValueError(f"a probe split needs at least one image, got n={n}")
    root = Path(out_dir) if out_dir is not None else probes_root(preset, seed)
    meta = {**_meta(cfg, preset, seed), "counts": {name: n for name in PROBES},
            "probes": {name: dataclasses.asdict(spec) for name, spec in PROBES.items()}}
    images = [(name, probe_id(name, i), partial(render_image, cfg, seed, i, name)) for name in PROBES for i in range(n)]
    return _write_cached(root, meta, images, {}, cfg, f"SynthVOC {preset} probes", progress, overwrite)


def _identity(meta: dict[str, Any]) -> list[Any]:
    """What makes two datasets the same: JSON-normalized so tuples and lists compare equal."""
    return json.loads(json.dumps([meta.get("generator_version"), meta.get("seed"), meta.get("params"),
                                  meta.get("probes"), meta.get("counts")]))


def _clear(root: Path) -> None:
    for name in _DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for name in _FILES:
        (root / name).unlink(missing_ok=True)


ImageJob = tuple[str, str, Callable[[], SynthSample]]  # split, image id, its renderer


def _write_cached(root: Path, meta: dict[str, Any], images: list[ImageJob], unions: dict[str, tuple[str, ...]],
                  cfg: SynthConfig, desc: str, progress: bool, overwrite: bool, workers: int = 1) -> Path:
    """`images` written to `root` (rendered by `workers` processes) unless its meta.json already
    records `meta`'s dataset. Two processes asking for the same dataset (notebooks side by side):
    one writes, one waits."""
    say: Callable[[str], None] = print if progress else (lambda _msg: None)
    with exclusive(root.parent / f".{root.name}.lock", f"writing {desc}"):
        meta_path = root / "meta.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if _identity(old) == _identity(meta):
                say(f"{desc} at {portable(root)} is up to date")
                return root
            if not overwrite:
                raise FileExistsError(
                    f"{root} holds a different SynthVOC (version {old.get('generator_version')}, seed "
                    f"{old.get('seed')}, preset {old.get('preset')}); pass overwrite=True (--overwrite) or choose "
                    "another folder")
            _clear(root)
        elif (root / _INCOMPLETE).exists():
            _clear(root)  # an interrupted run: start over so no stale files mix in
        elif root.exists() and any(root.iterdir()) and not overwrite:
            raise FileExistsError(f"{root} is not empty and holds no SynthVOC meta.json; refusing to write into it")
        elif overwrite:
            _clear(root)

        root.mkdir(parents=True, exist_ok=True)
        write_json(root / _INCOMPLETE, meta)
        ids: dict[str, list[str]] = {split: [] for split in meta["counts"]}
        labels: dict[str, np.ndarray] = {}
        write = partial(_write_image, root, cfg.jpeg_quality)
        with ExitStack() as stack:
            written: Iterable[tuple[str, str, np.ndarray]] = map(write, images)
            if workers > 1:  # spawned, not forked: the parent may hold OpenMP threads (torch's)
                pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
                written = pool.imap(write, images, chunksize=8)  # in order: the same lists and labels
            for split, iid, classes in tqdm(written, total=len(images), desc=desc, unit="img", disable=not progress):
                ids[split].append(iid)
                # Rebuilt with numpy's own dtype object: an array unpickled from a worker carries a copy
                # of it, which changes the bytes of the pickled cls_labels.npy.
                labels[iid] = np.array(classes.tolist(), dtype=np.float32)

        sets = root / "ImageSets" / "Segmentation"
        lists = {**ids, **{name: [i for split in parts for i in ids[split]] for name, parts in unions.items()}}
        for split, names in lists.items():
            write_text(sets / f"{split}.txt", "".join(f"{n}\n" for n in names))
        save_npy(root / "cls_labels.npy", labels)  # type: ignore[arg-type]  # a pickled dict, as IRNet/EPS ship
        write_text(root / "labels.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
        write_json(meta_path, meta)  # last: its presence means the dataset is complete
        (root / _INCOMPLETE).unlink()
        say(f"{desc} written to {portable(root)}")
    return root


def _write_image(root: Path, jpeg_quality: int, job: ImageJob) -> tuple[str, str, np.ndarray]:
    """Render one image and write its files; (split, id, its image label)."""
    split, iid, render = job
    sample = render()
    save_jpeg(root / "JPEGImages" / f"{iid}.jpg", sample.image, quality=jpeg_quality)
    save_label_png(root / "SegmentationClass" / f"{iid}.png", sample.label)
    save_gray_png(root / "SaliencyMaps" / f"{iid}.png", sample.saliency)
    save_label_png(root / "ContextMasks" / f"{iid}.png", sample.context)
    return split, iid, sample.classes


def render_by_id(root: str | os.PathLike, iid: str) -> SynthSample:
    """The image `iid` of the SynthVOC tree at `root` (a dataset or its probes), rendered again in
    memory from its meta.json: what the files do not hold, such as the part masks."""
    meta = json.loads((Path(root) / "meta.json").read_text())
    cfg = make_config(meta["preset"], **meta["params"])
    if iid.startswith("probe_"):
        probe, index = iid[len("probe_"):].rsplit("_", 1)
        return render_image(cfg, meta["seed"], int(index), probe)
    return render_image(cfg, meta["seed"], int(iid.rsplit("_", 1)[1]))


def load_cls_labels(root: str | os.PathLike) -> dict[str, np.ndarray]:
    return load_label_dict(Path(root) / "cls_labels.npy")  # SynthVOC ids are strings


# ----------------------------------------------------------------------------------------------
# CLI: wsss data synth --preset {tiny,quick,full} [--out DIR] [--seed N] [--overwrite]


def register(subparsers: argparse._SubParsersAction) -> None:
    """`wsss data synth` here, and `wsss data voc-labels` from wsss.data.voc."""
    from wsss.data.voc import add_voc_labels_command

    data = subparsers.add_parser("data", help="datasets: generate SynthVOC, image labels of real VOC")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    add_voc_labels_command(data_sub)
    synth = data_sub.add_parser("synth", help="generate the SynthVOC dataset in PASCAL VOC 2012 layout")
    synth.add_argument("--preset", choices=list(PRESETS), default="quick")
    synth.add_argument("--out", type=Path, default=None,
                       help="output root (default: $WSSS_DATA/synthvoc-<preset>-s<seed>, WSSS_DATA defaulting to ./data)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace a different dataset found at --out")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes rendering images (default: one per CPU)")
    synth.add_argument("--voc-sizes", action=argparse.BooleanOptionalAction, default=None,
                       help="VOC's image shapes (long side kept, both orientations); default: the preset's "
                            "(full: on)")
    synth.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    overrides = {} if args.voc_sizes is None else {"voc_sizes": args.voc_sizes}
    root = generate(args.out, args.preset, args.seed, overwrite=args.overwrite, workers=args.workers, **overrides)
    print(root)
    return 0
