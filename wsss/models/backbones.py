"""Backbones chosen by name: multi-stage feature extractors every method builds on.

A backbone returns the list of its stage outputs (fine to coarse), so a method can take the last
stage (CAM), several stages (SANCE's contour branch) or feed an ASPP (shape cues). Pretrained
weight loading is kept apart from the architecture (as timm does): `pretrained` is None (random
init), "imagenet" (torchvision's weights, needs internet or a warm torch hub cache) or a path.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

# torchvision is imported by the ResNet paths alone: importing it pulls in torch._dynamo (2-3 s of a
# process start), which the small backbone never needs. (A process that trains pays it anyway, later:
# torch's optimizers import torch._dynamo when built; kernels on cached runs and the CLI do not.)


class Backbone(nn.Module):
    """Stages applied in sequence; `forward` returns every stage's output."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int], strides: list[int],
                 frozen_bn: bool = False) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = channels  # output channels of each stage
        self.strides = strides  # output stride of each stage w.r.t. the input
        # IRNet keeps ImageNet BN statistics frozen: batches of 16 crops would estimate them badly.
        self.frozen_bn = frozen_bn
        if frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def output_stride(self) -> int:
        return self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":  # batch-size independent: exact equivalence between 1 and N processes
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; use 'bn' or 'gn'")


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def small_backbone(widths: tuple[int, ...] = (32, 64, 128, 128), norm: str = "bn",
                   blocks: tuple[int, ...] = (1, 1, 1, 1), **_: object) -> Backbone:
    """A residual net sized for CPU training from scratch on SynthVOC: output stride 8.

    Stage strides 4, 8, 8, 8: downsampling early keeps the full-resolution layers cheap (most of
    the cost of a small net); the last two stages are dilated instead of strided, as DeepLab and
    IRNet do, so CAMs keep their resolution.
    """
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), _norm(norm, widths[0]), nn.ReLU(inplace=True))
    specs = [(widths[0], widths[0], 2, 1), (widths[0], widths[1], 2, 1), (widths[1], widths[2], 1, 2),
             (widths[2], widths[3], 1, 2)]
    # A one-block stage is the block itself, not a Sequential of one: saved runs keep their names.
    stages: list[nn.Module] = [
        nn.Sequential(_BasicBlock(cin, cout, s, d, norm), *(_BasicBlock(cout, cout, 1, d, norm) for _ in range(n - 1)))
        if n > 1 else _BasicBlock(cin, cout, s, d, norm)
        for (cin, cout, s, d), n in zip(specs, blocks)]
    return Backbone(stem, stages, list(widths), [4, 8, 8, 8])


def _resnet(arch: str, output_stride: int, pretrained: str | os.PathLike | None, freeze_bn: bool) -> Backbone:
    """torchvision ResNet with output stride 16 (IRNet's: the last stage keeps the resolution) or 8
    (DeepLab's and SANCE's: the last two stages do)."""
    import torchvision

    ctor: Callable[..., torchvision.models.ResNet] = getattr(torchvision.models, arch)
    if output_stride not in (8, 16):
        raise ValueError(f"ResNet output stride must be 8 or 16, got {output_stride}")
    bottleneck = arch in ("resnet50", "resnet101")
    kept = [False, output_stride == 8, True]  # which of stages 2-4 keep the resolution
    # torchvision expresses a kept resolution as dilation (replace_stride_with_dilation), which keeps
    # the receptive field of the pretrained filters. Its BasicBlock (ResNet-18/34) cannot dilate, so
    # there the first block of such a stage just loses its stride.
    net = ctor(weights=None, replace_stride_with_dilation=kept if bottleneck else [False, False, False])
    if not bottleneck:
        for stage, keep in zip((net.layer2, net.layer3, net.layer4), kept):
            if keep:
                stage[0].conv1.stride = (1, 1)
                stage[0].downsample[0].stride = (1, 1)
    if pretrained is not None:
        load_pretrained(net, arch, pretrained)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    expansion = 4 if bottleneck else 1
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    out_strides = [4, 8, output_stride, output_stride]
    return Backbone(stem, stages, channels, out_strides, frozen_bn=freeze_bn)


def load_pretrained(net: nn.Module, arch: str, pretrained: str | os.PathLike) -> None:
    """Load ImageNet weights: 'imagenet' asks torchvision (downloads once), a path reads a file."""
    if str(pretrained) == "imagenet":
        import torchvision

        weights = torchvision.models.get_weight(f"{_WEIGHT_ENUMS[arch]}.IMAGENET1K_V1")
        try:
            state = weights.get_state_dict(progress=True)
        except Exception as exc:  # URLError, ConnectionError, ... : say what to do instead
            raise RuntimeError(
                f"could not fetch ImageNet weights for {arch} ({exc}). Offline? Save them once with "
                f"torch.save(torchvision.models.{arch}(weights='IMAGENET1K_V1').state_dict(), PATH) on a "
                "machine with internet and pass pretrained=PATH"
            ) from exc
    else:
        state = _read_weights(pretrained)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet head is unused
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"weights {pretrained} do not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A saved state dict (also inside a {"state_dict": ...} checkpoint), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state


def load_small_weights(net: Backbone, path: str | os.PathLike, fresh_extra_blocks: bool = False) -> None:
    """Weights for the 'small' backbone, which has no ImageNet release: a file saved from an
    earlier run, either a backbone state dict or a whole method's (its `backbone.*` entries).

    `fresh_extra_blocks`: weights of a one-block-per-stage net fill the first block of each stage
    of a deeper `net`; the blocks beyond start fresh (how the final network deepens the shipped
    backbone). Without it a file must fit exactly."""
    state = _read_weights(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if fresh_extra_blocks:
        state = {_first_block_name(net, k): v for k, v in state.items()}
    hint = f"weights {path} do not fit this 'small' backbone (saved with other widths or blocks?)"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes differ
        raise ValueError(f"{hint}: {exc}") from exc
    if fresh_extra_blocks:
        missing = [k for k in missing if not _is_extra_block(k)]
    if missing or unexpected:
        raise ValueError(f"{hint}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _first_block_name(net: Backbone, key: str) -> str:
    """`stages.i.<param>` of a one-block stage as the name of the first block of a deeper stage i."""
    parts = key.split(".")
    if parts[0] == "stages" and isinstance(net.stages[int(parts[1])], nn.Sequential) and not parts[2].isdigit():
        return ".".join([*parts[:2], "0", *parts[2:]])
    return key


def _is_extra_block(key: str) -> bool:
    parts = key.split(".")
    return parts[0] == "stages" and parts[2].isdigit() and int(parts[2]) > 0


_WEIGHT_ENUMS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                 "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}


# The small backbone pretrained on a generated SynthVOC corpus (`wsss pretrain`), shipped with the code.
SYNTHVOC_WEIGHTS = Path(__file__).resolve().parent / "weights" / "small_synthvoc.pt"


def _named_file(pretrained: str | os.PathLike | None) -> Path | None:
    """None and "scratch" (random init) name no file, "synthvoc" the shipped weights, anything else a path."""
    if pretrained is None or str(pretrained) == "scratch":
        return None
    return SYNTHVOC_WEIGHTS if str(pretrained) == "synthvoc" else Path(pretrained)


def weights_file(pretrained: str | os.PathLike | None) -> Path | None:
    """The file a small backbone's `pretrained` setting names (None for random init)."""
    path = _named_file(pretrained)
    if str(pretrained) == "synthvoc" and not SYNTHVOC_WEIGHTS.is_file():
        raise FileNotFoundError(f"{SYNTHVOC_WEIGHTS} is missing; create it with `wsss pretrain`")
    return path


def weights_digest(pretrained: str | os.PathLike | None) -> str | None:
    """Content hash of a weights file named by `pretrained` (None for random init, downloads or a
    missing file), so a run hash changes when the file behind the same name does."""
    path = None if str(pretrained) == "imagenet" else _named_file(pretrained)
    return hashlib.sha1(path.read_bytes()).hexdigest()[:10] if path is not None and path.is_file() else None


def build_backbone(name: str, pretrained: str | os.PathLike | None = None, **kwargs: object) -> Backbone:
    """Backbones by name: 'small' (CPU; from scratch, "synthvoc" for the shipped SynthVOC-pretrained
    weights, or a file saved by an earlier run), 'resnet18', 'resnet50', 'resnet101'."""
    if name == "small":
        fresh_extra_blocks = bool(kwargs.pop("fresh_extra_blocks", False))
        net = small_backbone(**kwargs)  # type: ignore[arg-type]
        path = weights_file(pretrained)
        if path is not None:
            load_small_weights(net, path, fresh_extra_blocks)
        return net
    pretrained = None if pretrained == "scratch" else pretrained
    arch, _, suffix = name.partition("-")
    if arch in _WEIGHT_ENUMS and suffix in ("", "os8"):
        freeze_bn = bool(kwargs.get("freeze_bn", pretrained is not None))
        return _resnet(arch, 8 if suffix == "os8" else 16, pretrained, freeze_bn)
    raise ValueError(f"unknown backbone {name!r}; available: {BACKBONES}")


# "-os8": output stride 8 (the last two stages dilated), as DeepLab's and SANCE's networks use.
BACKBONES = ("small", *_WEIGHT_ENUMS, *(f"{arch}-os8" for arch in _WEIGHT_ENUMS))
