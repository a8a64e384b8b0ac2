"""Batch norm folded into the convolution before it, for inference passes over whole splits.

In eval mode a batch norm is an affine map per channel, so it can be folded into the weights and
bias of the convolution that feeds it: the same function up to float rounding, one pass over the
feature maps fewer. On the `small` CPU net the network pass of class-map inference gets about 13%
faster (38.8 -> 43.7 images/s, one thread, scales 1, 1.5, 2 with flips, 96 px); the whole stage,
which also reads images and writes files, 5-8% (train split, quick demo: 40-41 -> 37-39 s). Only
the backbones are folded (where almost all convolutions are); heads are kept as they are.
"""
from __future__ import annotations

import copy
from typing import TypeVar

import torch.nn as nn
from torch.fx.experimental.optimization import fuse

from wsss.models.backbones import Backbone

M = TypeVar("M", bound=nn.Module)


def folded_for_inference(model: M) -> M:
    """An eval-mode copy of `model` with the batch norms of each of its backbones folded into their
    convolutions; `model` itself is left as it is (training, state dicts and figures use it)."""
    model = copy.deepcopy(model).eval()
    for backbone in [m for m in model.modules() if isinstance(m, Backbone)]:
        backbone.stem = _folded(backbone.stem)
        backbone.stages = nn.ModuleList(_folded(stage) for stage in backbone.stages)
    return model


def _folded(module: nn.Module) -> nn.Module:
    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module  # group-norm backbones: nothing to fold, and no tracing
    return fuse(module)
