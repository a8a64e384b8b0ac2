"""Joint augmentations: image, masks and saliency move together, so pixels stay aligned.

Label maps are `mask` and every `<name>_mask` (a dataset's `extra_masks`, e.g. CAM seeds): all
are resized with nearest neighbour, flipped, padded with the ignore index and made int64.

Each transform is a callable `(sample, rng) -> sample` over numpy arrays; `ToTensor` comes last.
The generator is passed in (not global) so a sample's augmentation depends only on
(seed, epoch, index): reproducible across worker counts, processes and resumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from wsss.io import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Sample = dict[str, Any]


def mask_keys(sample: Sample) -> list[str]:
    """The label-map entries of a sample: `mask` and the `<name>_mask` extras."""
    return [k for k in sample if k == "mask" or k.endswith("_mask")]


def resize_saliency(saliency: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    return cv2.resize(saliency, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)


def _resize(sample: Sample, size_hw: tuple[int, int]) -> Sample:
    h, w = size_hw
    out = dict(sample)
    out["image"] = cv2.resize(sample["image"], (w, h), interpolation=cv2.INTER_LINEAR)
    for key in mask_keys(sample):
        out[key] = cv2.resize(sample[key], (w, h), interpolation=cv2.INTER_NEAREST)
    if "saliency" in sample:
        out["saliency"] = resize_saliency(sample["saliency"], (h, w))
    return out


@dataclass(frozen=True)
class RandomRescale:
    low: float = 0.7
    high: float = 1.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        s = rng.uniform(self.low, self.high)
        h, w = sample["image"].shape[:2]
        return _resize(sample, (max(1, round(h * s)), max(1, round(w * s))))


@dataclass(frozen=True)
class RandomHFlip:
    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        out = dict(sample)
        for key in ("image", "saliency", *mask_keys(sample)):
            if key in sample:
                out[key] = np.ascontiguousarray(sample[key][:, ::-1])
        return out


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast and saturation jitter on the image only (as torchvision's, in numpy)."""

    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        img = sample["image"].astype(np.float32)
        b, c, s = (rng.uniform(1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation))
        img = img * b
        gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = (img - gray.mean()) * c + gray.mean()
        gray = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        img = (img - gray) * s + gray
        out = dict(sample)
        out["image"] = np.clip(img, 0, 255).astype(np.uint8)
        return out


@dataclass(frozen=True)
class RandomCrop:
    """Crop to `size` x `size`; smaller images are padded: image with the dataset mean (zero after
    normalization), mask with the ignore index, saliency with 0, so padding never counts as a class."""

    size: int

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["image"].shape[:2]
        ph, pw = max(self.size - h, 0), max(self.size - w, 0)
        # Where the image sits inside a padded canvas, and where the crop starts in the canvas.
        oy, ox = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        cy, cx = int(rng.integers(0, max(h - self.size, 0) + 1)), int(rng.integers(0, max(w - self.size, 0) + 1))
        out = dict(sample)
        fills = {"image": np.round(IMAGENET_MEAN * 255).astype(np.uint8), "saliency": 0.0,
                 **{key: IGNORE_INDEX for key in mask_keys(sample)}}
        for key, fill in fills.items():
            if key not in sample:
                continue
            arr = sample[key]
            canvas = np.empty((self.size, self.size) + arr.shape[2:], dtype=arr.dtype)
            canvas[...] = fill
            src = arr[cy:cy + self.size, cx:cx + self.size]
            canvas[oy:oy + src.shape[0], ox:ox + src.shape[1]] = src
            out[key] = canvas
        valid = np.zeros((self.size, self.size), dtype=bool)
        sh, sw = min(h, self.size), min(w, self.size)
        valid[oy:oy + sh, ox:ox + sw] = True
        out["valid"] = valid
        return out


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 tensor, ImageNet-normalized."""
    img = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def denormalize_image(image: torch.Tensor) -> np.ndarray:
    """Inverse of `normalize_image`, for display: (3, H, W) tensor -> (H, W, 3) uint8."""
    img = image.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ToTensor:
    """Image -> normalized float tensor; masks -> int64; saliency -> float32; label -> float32.
    The raw uint8 image stays available as `image_uint8` for CRF and display."""

    keep_uint8: bool = False

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        out = dict(sample)
        if self.keep_uint8:
            out["image_uint8"] = torch.from_numpy(np.ascontiguousarray(sample["image"]))
        out["image"] = normalize_image(sample["image"])
        out["label"] = torch.as_tensor(sample["label"], dtype=torch.float32)
        for key in mask_keys(sample):
            out[key] = torch.from_numpy(np.ascontiguousarray(sample[key])).long()
        if "saliency" in sample:
            out["saliency"] = torch.from_numpy(np.ascontiguousarray(sample["saliency"], dtype=np.float32))
        if "valid" in sample:
            out["valid"] = torch.from_numpy(sample["valid"])
        return out


@dataclass(frozen=True)
class Compose:
    transforms: Sequence[Any]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def train_transform(crop_size: int, scale: tuple[float, float] = (0.7, 1.3), flip: bool = True,
                    color_jitter: bool = True) -> Compose:
    """The standard CAM training augmentation (IRNet: rescale, flip, colour jitter, crop)."""
    steps: list[Any] = [RandomRescale(*scale)]
    if flip:
        steps.append(RandomHFlip())
    if color_jitter:
        steps.append(ColorJitter())
    steps += [RandomCrop(crop_size), ToTensor()]
    return Compose(steps)


def eval_transform(keep_uint8: bool = True) -> Compose:
    return Compose([ToTensor(keep_uint8=keep_uint8)])
