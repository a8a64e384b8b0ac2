"""Fully connected (dense) CRF post-processing on top of ``pydensecrf``.

Used by the CAM baseline (seed refinement as in IRNet/PSA), by SANCE's label
refine module (Eq. 8: ``Y^crf`` from the segmentation map) and by EPS/VWL for
pseudo-label clean-up.

The defaults are those of PSA's ``crf_inference`` (jiwoon-ahn/psa,
``tool/imutils.py``), the probability-input CRF that PSA, IRNet's CAM
post-processing and EPS all reuse:

* ``d.addPairwiseGaussian(sxy=3, compat=3)``
* ``d.addPairwiseBilateral(sxy=80, srgb=13, compat=10)``
* ``d.inference(t=10)``

IRNet's *label*-input variant ``crf_inference_label`` (jiwoon-ahn/irn,
``misc/imutils.py``) uses ``bilateral_sxy=50, bilateral_srgb=5`` instead; pass
``CRFParams(bilateral_sxy=50, bilateral_srgb=5)`` to reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CRFParams", "dense_crf", "crf_labels"]


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF hyper-parameters (defaults: PSA ``crf_inference``, see module doc)."""

    iterations: int = 10  # mean-field iterations, psa t=10
    gaussian_sxy: float = 3.0  # smoothness kernel spatial std (pixels)
    gaussian_compat: float = 3.0  # smoothness kernel weight (Potts compatibility)
    bilateral_sxy: float = 80.0  # appearance kernel spatial std (psa 80; irn label-CRF 50)
    bilateral_srgb: float = 13.0  # appearance kernel colour std (psa 13; irn label-CRF 5)
    bilateral_compat: float = 10.0  # appearance kernel weight
    eps: float = 1e-8  # probabilities are clipped to [eps, 1] before -log

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {self.iterations!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps!r}")


def _validate(image: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if not isinstance(probs, np.ndarray):
        raise TypeError(f"probs must be a numpy array, got {type(probs).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (0..255 RGB), got dtype {image.dtype}")
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (C, H, W), got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be a float array, got dtype {probs.dtype}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs spatial size {probs.shape[1:]} does not match image size {image.shape[:2]}"
        )
    if probs.shape[0] < 1:
        raise ValueError("probs must have at least one channel")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or inf")
    return np.ascontiguousarray(image), probs


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine per-pixel class probabilities with a dense CRF.

    Args:
        image: ``uint8`` RGB image, shape ``(H, W, 3)``.
        probs: float class probabilities, shape ``(C, H, W)`` (they need not be
            normalised; the unary is ``-log(clip(probs, eps, 1))``).
        params: CRF hyper-parameters.

    Returns:
        ``float32`` array ``(C, H, W)``: the CRF marginals (sum to 1 over C).
    """
    import pydensecrf.densecrf as dcrf

    image, probs = _validate(image, probs)
    c, h, w = probs.shape
    unary = -np.log(np.clip(probs.astype(np.float32, copy=False), params.eps, 1.0))
    unary = np.ascontiguousarray(unary.reshape(c, h * w), dtype=np.float32)

    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
    )
    q = d.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def crf_labels(
    image: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    params: CRFParams = CRFParams(),
) -> np.ndarray:
    """Hard labels from :func:`dense_crf`.

    Args:
        labels: class id of each channel of ``probs`` (e.g. ``[0, *present]``
            when ``probs`` holds background + the image's present classes).
            ``None`` means channel index == class id.

    Returns:
        ``int64`` array ``(H, W)`` of class ids.
    """
    q = dense_crf(image, probs, params)
    idx = np.argmax(q, axis=0)
    if labels is None:
        return idx.astype(np.int64)
    keys = np.asarray(labels, dtype=np.int64).reshape(-1)
    if keys.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels has {keys.shape[0]} entries but probs has {probs.shape[0]} channels"
        )
    return keys[idx]
