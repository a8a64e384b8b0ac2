"""Multi-scale, flipped class-map inference, saved per image (IRNet's `make_cam`).

For each image, a method's `class_maps` are computed at every scale, with and without a
horizontal flip, resized to the image, summed, restricted to the classes the image label
says are present, and max-normalized per class. One `.npz` per image holds `keys` (0-based
foreground class indices) and `cam` (n_present, H, W) in [0, 1], float16 to keep runs small.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from wsss.progress import tqdm, waited

from wsss.io import save_npz

MapFn = Callable[[torch.Tensor], torch.Tensor]

# Budget of one forward pass of multi-scale inference, in input pixels (images x height x width),
# so that any image size runs in bounded memory: a batch whose pass would exceed it runs in several
# passes of fewer images (the same maps), and an image that alone exceeds it at some scale runs at
# the largest size that fits, its aspect kept (a capped scale, with a warning). 4096 x 4096 px: a
# 2048 x 2048 image at scale 2 runs as asked; a 4000 x 3000 photo runs its scales 1.5 and 2 at 1.18
# (`python -m wsss.benchmarks.large_image` measures its peak memory). `max_pixels=` or the
# environment variable below overrides it.
MAX_SCALED_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "WSSS_MAX_INFER_PIXELS"


def scales_tag(scales: Sequence[float], flip: bool) -> str:
    """File-name tag of a test-time augmentation, e.g. "s1-0.5_flip"."""
    return "s" + "-".join(f"{x:g}" for x in scales) + ("_flip" if flip else "")


def capped_size(size: Sequence[int], scale: float, max_pixels: float) -> tuple[int, int]:
    """The (h, w) of an image of `size` at `scale`, `round(size * scale)`, shrunk with its aspect
    kept to at most `max_pixels` pixels."""
    h, w = (max(1, round(n * scale)) for n in size)
    if h * w <= max_pixels:
        return h, w
    shrink = math.sqrt(max_pixels / (h * w))
    return max(1, math.floor(h * shrink)), max(1, math.floor(w * shrink))


def _in_passes(map_fn: MapFn, x: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """`map_fn(x)`, run on as few chunks of the batch as keep each pass within `max_pixels` input
    pixels (one image at least)."""
    per_pass = max(1, max_pixels // (x.shape[-2] * x.shape[-1]))
    if x.shape[0] <= per_pass:
        return map_fn(x)
    return torch.cat([map_fn(part) for part in x.split(per_pass)])


@torch.no_grad()
def multiscale_maps(map_fn: MapFn, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
                    flip: bool = True, max_pixels: int | None = None) -> torch.Tensor:
    """Sum over scales (and flips) of `map_fn(images)` brought to the input size: (B, K, H, W).

    Each scale's input is `round(size * scale)` px, resized with antialiasing when it shrinks (as
    IRNet's PIL resize does; plain bilinear would alias thin structures); its maps go back to the
    image grid with `to_image_grid`, a flipped pass flipped back after that (its padding lies on
    the other side). Which scales suit the image size is the scale policy's call (`wsss.scale`).
    No forward pass exceeds `max_pixels` input pixels (default `max_scaled_pixels()`): see
    MAX_SCALED_PIXELS."""
    limit = max_scaled_pixels() if max_pixels is None else max_pixels
    size = tuple(images.shape[-2:])
    total = None
    for s in scales:
        scaled = capped_size(size, s, limit)
        if scaled != capped_size(size, s, math.inf):
            warnings.warn(f"a {size[1]}x{size[0]} image at scale {s:g} exceeds {limit / 1e6:.1f} M pixels per "
                          f"forward pass ({MAX_PIXELS_ENV}): it runs at {scaled[1]}x{scaled[0]}", stacklevel=2)
        x = images if scaled == size else F.interpolate(images, size=scaled, mode="bilinear", align_corners=False,
                                                        antialias=scaled[0] * scaled[1] < size[0] * size[1])
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = to_image_grid(_in_passes(map_fn, x, limit).float(), scaled, size)
        if flip:
            half = maps.shape[0] // 2
            maps = maps[:half] + maps[half:].flip(-1)
        total = maps if total is None else total + maps
    assert total is not None, "scales must not be empty"
    return total


def output_stride(input_size: Sequence[int], map_size: Sequence[int]) -> int | None:
    """The stride of a network that turned `input_size` into `map_size` (each strided layer rounds
    up: ceil(n / stride) cells), or None when no power of two explains both sides."""
    for stride in (1, 2, 4, 8, 16, 32, 64):
        if all(math.ceil(n / stride) == m for n, m in zip(input_size, map_size)):
            return stride
    return None


def to_image_grid(maps: torch.Tensor, input_size: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Maps computed on an input of `input_size` (the image at some scale), resized to the image's
    `size` with every cell kept where it lies, as IRNet's `make_cam` does: a map of m cells at
    stride s covers m * s input pixels, past the input's edge when the input is no multiple of s;
    it is upsampled to that extent (in image pixels) and cropped. A plain resize to `size` would
    stretch the padded extent over the image: up to 9 px off at 375 px, stride 16. When the input
    is a multiple of the stride both are the same operation."""
    stride = output_stride(input_size, maps.shape[-2:])
    if stride is None:
        return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    extent = [round(m * stride * n / i) for m, n, i in zip(maps.shape[-2:], size, input_size)]
    up = F.interpolate(maps, size=tuple(extent), mode="bilinear", align_corners=False)
    return up[..., :size[0], :size[1]]


def at_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, H, W) label-like map -> (B, h, w), sampling each cell's centre pixel."""
    return F.interpolate(x[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].to(x.dtype)


def present_with_background(label: torch.Tensor) -> torch.Tensor:
    """(B, 1 + K) bool: the background channel and the classes of the image label (B, K)."""
    return torch.cat([label.new_ones(label.shape[0], 1), label], dim=1) > 0.5


def pack_present(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) bool -> (channels, kept), each (B, n) with n the largest present count: the indices of
    each image's present channels first, in channel order, and which of those n are present (the
    rest pad the rows of images with fewer). Work on present classes only then costs what the
    image labels hold, not K."""
    n = int(present.sum(dim=1).max()) if present.numel() else 0
    channels = present.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :n]
    return channels, present.gather(1, channels)


def normalize_present(maps: torch.Tensor, label: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Keep the present classes of one image's (K, H, W) maps and scale each to max 1."""
    keys = torch.nonzero(label > 0.5).flatten()
    cam = F.relu(maps[keys])
    cam = cam / (cam.flatten(1).max(dim=1).values[:, None, None] + 1e-5)
    return keys.cpu().numpy().astype(np.int64), cam.cpu().numpy()


def save_cam(path: str | os.PathLike, keys: np.ndarray, cam: np.ndarray) -> None:
    save_npz(path, keys=keys, cam=cam.astype(np.float16))


def load_cam(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(keys, cam): 0-based class indices of the present classes and their (n, H, W) float32 maps."""
    with np.load(path) as data:
        return data["keys"].astype(np.int64), data["cam"].astype(np.float32)


def max_scaled_pixels() -> int:
    """The default bound of `infer_class_maps`: $WSSS_MAX_INFER_PIXELS when set, else MAX_SCALED_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return MAX_SCALED_PIXELS
    try:
        return int(float(raw))  # float() also takes 5e7
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count") from None


def _is_out_of_memory(exc: RuntimeError) -> bool:
    # CUDA raises torch.OutOfMemoryError; a failed CPU allocation is a plain RuntimeError.
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory"))


def in_bf16(map_fn: MapFn, device: str | torch.device) -> MapFn:
    """`map_fn` run under bf16 autocast on `device`, its maps returned in fp32 (a run trained with
    `amp` is read in the precision it learnt in, at its speed)."""
    device_type = torch.device(device).type

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return map_fn(images).float()
    return run


def infer_class_maps(map_fn: MapFn, dataset: torch.utils.data.Dataset, out_dir: str | os.PathLike, *,
                     scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                     device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True,
                     max_pixels: int | None = None, amp: bool = False, first_class: int = 0,
                     also: Callable[[list[dict[str, Any]], torch.Tensor], None] | None = None,
                     num_workers: int = 0) -> Path:
    """Write `<out_dir>/<id>.npz` for every image of `dataset` (eval transform), skipping done ones;
    `amp`: the network runs under bf16 autocast (`in_bf16`).

    `map_fn` may return more channels than the K class maps, which then start at channel
    `first_class` (e.g. a background channel first); `also(samples, maps)` receives each batch's
    summed (B, C, H, W) maps, for outputs that come from the same network pass (shape cues' decoder
    masks), so that no second pass over the images is needed.

    Images of equal size are batched together (SynthVOC); differently sized ones (VOC) go one by one.
    `num_workers` processes read them ahead of the network (`size_grouped_batches`).
    No forward pass exceeds `max_pixels` input pixels (default `max_scaled_pixels()`; see
    MAX_SCALED_PIXELS), whatever the image size; running out of memory all the same is an error
    naming the images.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = max_scaled_pixels() if max_pixels is None else max_pixels
    if amp:
        map_fn = in_bf16(map_fn, device)
    todo = [i for i in range(len(dataset)) if not (out_dir / f"{dataset.ids[i]}.npz").is_file()]
    bar = tqdm(total=len(todo), desc=f"class maps -> {out_dir.name}", disable=not progress, dynamic_ncols=True)
    for group in waited(size_grouped_batches(dataset, batch_size, todo, num_workers), "class_maps"):
        images = torch.stack([s["image"] for s in group]).to(device)
        try:
            maps = multiscale_maps(map_fn, images, scales, flip, limit)
        except RuntimeError as exc:
            if not _is_out_of_memory(exc):
                raise
            ids = ", ".join(s["id"] for s in group[:3]) + (", ..." if len(group) > 3 else "")
            h, w = images.shape[-2:]
            raise torch.OutOfMemoryError(
                f"out of memory computing class maps of image(s) {ids} ({w}x{h}, batch of {len(group)}, scales "
                f"{tuple(scales)}, flip={flip}) on {device}: lower the pixel budget per pass ({limit / 1e6:.1f} M, "
                f"{MAX_PIXELS_ENV}) or drop the large scales"
            ) from exc
        if also is not None:
            also(group, maps)
        for s, m in zip(group, maps[:, first_class:]):
            keys, cam = normalize_present(m, s["label"].to(m.device))
            save_cam(out_dir / f"{s['id']}.npz", keys, cam)
        bar.update(len(group))
    bar.close()
    return out_dir


def size_grouped_batches(dataset: Any, batch_size: int = 16, indices: Sequence[int] | None = None,
                         num_workers: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Evaluation samples in order, in batches whose images share a size, so they can be stacked:
    SynthVOC batches whole, VOC's differently sized images mostly go one by one. With
    `num_workers`, that many processes read and decode the next chunks while the caller computes."""
    indices = list(range(len(dataset)) if indices is None else indices)
    chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    if num_workers == 0:
        for chunk in chunks:
            yield from _grouped_by_size([dataset[i] for i in chunk])
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=num_workers,
                                         collate_fn=_grouped_by_size)
    for groups in loader:
        yield from groups


def _grouped_by_size(samples: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`samples` in groups of equal image size, in the order each size first appears."""
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault(tuple(s["image"].shape), []).append(s)
    return list(groups.values())
