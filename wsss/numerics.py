"""Numerics that come out the same on every x86-64 CPU with AVX2: for the tests and their stored tables.

`tests/conftest.py` sets `PORTABLE_ENV` beside its pins of torch (AVX2), MKL (its COMPATIBLE
branch, the one that is the same on Intel and AMD), OpenBLAS and numpy, and `import wsss` then
applies this module, in the test processes and in every notebook kernel they start (kernels
inherit the environment). Pinning instruction sets was not enough: the tiny preset's tables moved
by up to 7.5 points between a Xeon and an AMD EPYC, both on AVX2 paths (notebook 01's CRF row;
the CAM rows by 0.1-0.2). Two libraries choose their code by more than the instruction set:
oneDNN sizes its convolution blocks by the CPU's caches, and OpenCV dispatches AVX-512 code where
the CPU has it. Without them, convolutions run as ATen's own kernels and MKL's GEMM, 2x faster on
the tiny preset's small tensors (CAM training 8.8 -> 4.3 s, measured), and OpenCV runs its
baseline code. Results elsewhere are not touched: runs outside the tests keep oneDNN's speed.
"""
from __future__ import annotations

import os

PORTABLE_ENV = "WSSS_PORTABLE_NUMERICS"


def portable_requested() -> bool:
    return os.environ.get(PORTABLE_ENV, "") not in ("", "0")


def use_portable_numerics() -> None:
    import cv2
    import torch

    torch.backends.mkldnn.enabled = False
    cv2.setUseOptimized(False)
