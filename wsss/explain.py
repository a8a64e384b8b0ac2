"""Class maps of any image, from a trained run or a model, in three lines:

    from wsss.explain import explain, overlay
    result = explain("runs/cam-small-quick-fc2fec05f1", ["street.jpg", "harbour.jpg"])
    picture = overlay(result.images[0], result.maps[0][result.class_names.index("boat")])

`explain` takes a run folder, an `Experiment` or a `WSSSMethod` (then with `class_names`), and
images as paths, uint8 (H, W, 3) arrays or normalized (3, H, W) / (B, 3, H, W) tensors, each at
its own size. The maps are the method's `class_maps` averaged over `scales` and flips (the same
multi-scale inference as the run's stored class maps), ReLU'd and scaled to max 1 per class.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from wsss.data.transforms import denormalize_image, normalize_image
from wsss.inference import multiscale_maps
from wsss.methods.base import WSSSMethod

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]


@dataclass
class Explanation:
    """Per image: `images[i]` (H, W, 3) uint8, `maps[i]` (K, H, W) in [0, 1], `peaks[i]` (K,) the
    raw maximum of each class map before scaling (how strongly the network sees the class)."""

    images: list[np.ndarray]
    maps: list[np.ndarray]
    peaks: list[np.ndarray]
    class_names: tuple[str, ...]

    def top_classes(self, index: int, k: int = 3) -> list[tuple[str, float]]:
        """The `k` classes with the strongest raw map peak in image `index`."""
        order = np.argsort(-self.peaks[index])[:k]
        return [(self.class_names[c], float(self.peaks[index][c])) for c in order]


def explain(source: Any, images: ImageLike | Sequence[ImageLike], class_names: Sequence[str] | None = None,
            scales: Sequence[float] = (1.0,), flip: bool = True, device: str | torch.device | None = None) -> Explanation:
    """Class maps of `images` from `source`: a run folder, an `Experiment` or a `WSSSMethod`."""
    method, names = _method_and_names(source, class_names)
    device = torch.device(device) if device is not None else next(method.parameters()).device
    method = method.to(device).eval()
    batch = _as_images(images)
    out = Explanation([], [], [], names)
    with torch.no_grad():
        for image in batch:
            raw = multiscale_maps(method.class_maps, normalize_image(image)[None].to(device), scales, flip)[0]
            raw = torch.relu(raw.float())
            if raw.shape[0] != len(names):
                raise ValueError(f"the model gives {raw.shape[0]} maps but {len(names)} class names were given")
            peaks = raw.flatten(1).max(dim=1).values
            out.images.append(image)
            out.maps.append((raw / (peaks[:, None, None] + 1e-5)).cpu().numpy())
            out.peaks.append(peaks.cpu().numpy())
    return out


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """`heat` ((H, W), values in [0, 1]) coloured with `cmap` over `image` ((H, W, 3) uint8): uint8."""
    import matplotlib

    if heat.shape != image.shape[:2]:
        raise ValueError(f"map of shape {heat.shape} for an image of {image.shape[:2]}")
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def _method_and_names(source: Any, class_names: Sequence[str] | None) -> tuple[WSSSMethod, tuple[str, ...]]:
    from wsss.experiment import Experiment

    if isinstance(source, (str, os.PathLike)):
        source = Experiment.from_run(source, progress=False)
    if isinstance(source, Experiment):
        if not (source.run_dir / "model.pt").is_file():
            raise FileNotFoundError(f"{source.run_dir} holds no trained model (model.pt); train the run first")
        return source.trained_method(), tuple(class_names or source.class_names)
    if isinstance(source, WSSSMethod):
        if class_names is None:
            raise ValueError("a bare model needs class_names")
        return source, tuple(class_names)
    raise TypeError(f"explain() takes a run folder, an Experiment or a WSSSMethod, not {type(source).__name__}")


def _as_images(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """uint8 (H, W, 3) arrays from paths, arrays, or normalized image tensors (one or a batch)."""
    if isinstance(images, torch.Tensor):
        batch = images[None] if images.dim() == 3 else images
        return [denormalize_image(x) for x in batch]
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    out = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            from PIL import Image

            with Image.open(Path(item)) as im:
                item = np.asarray(im.convert("RGB"))
        elif isinstance(item, torch.Tensor):
            item = denormalize_image(item)
        if not (isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8):
            raise ValueError("images must be paths, (H, W, 3) uint8 arrays or normalized (3, H, W) tensors")
        out.append(item)
    return out
