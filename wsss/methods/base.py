"""The one hook set every method implements, and the registry that finds methods by name.

Like pytorch-grad-cam's variants, a method states only what its paper adds: its heads, its
losses and how it turns outputs into class maps. The training loop, data, CAM inference,
refinement and metrics are shared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss.inference import infer_class_maps
from wsss.models.backbones import Backbone, build_backbone
from wsss.scale import PAPER_SCALE, ScalePolicy

Batch = dict[str, Any]


class RunView(Protocol):
    """What a method sees of the run that trains it (`wsss.experiment.Experiment` is one): its
    config, folder and device, its data, its trained model, the CAM baseline run it builds on,
    and the cache keys and scores of the shared stages. A method never reaches further."""

    config: Any
    run_dir: Path
    data_root: Path
    progress: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def method(self) -> "WSSSMethod": ...

    def dataset(self, split: str, train: bool = False) -> Any: ...

    def crop_size(self) -> int: ...

    def tta_scales(self) -> tuple[float, ...]: ...

    def scale_policy(self) -> ScalePolicy: ...

    def trained_method(self) -> "WSSSMethod": ...

    def inference_method(self) -> "WSSSMethod": ...

    def cam_run(self) -> "RunView": ...

    def related_run(self, method: str, **options: Any) -> "RunView": ...

    def class_maps(self, split: str | None = None) -> Path: ...

    def class_maps_key(self, split: str) -> dict[str, Any]: ...

    def best_threshold(self, split: str | None = None) -> float: ...

    def stage_key(self, stage: str, split: str, model_dir: Path | None = None, **settings: Any) -> dict[str, Any]: ...

    def evaluate_masks(self, pred_dir: Path, split: str | None = None) -> dict[str, Any]: ...

    def provenance(self, split: str, bg_threshold: float | None, crf: bool) -> dict[str, Any]: ...


class WSSSMethod(nn.Module):
    """Base class. Subclasses set `name` and override `new_modules`, `forward` and `class_maps`.

    - `forward(batch, progress)` returns a dict of scalar losses; key "loss" is what is optimized,
      the others are logged. `progress` runs from 0 to 1 over training (for warm-ups and annealing).
      The training loop calls it through DistributedDataParallel, so all trainable work happens here.
    - `class_maps(images)` returns non-negative (B, K, h, w) maps of the K foreground classes;
      CAM inference sums them over scales and flips.
    - `image_logits(images)` returns the (B, K) image-level scores the classification loss reads
      (what a label flip under an intervention is read from; see `image_probabilities`).
    - `after_optimizer_step(progress)` runs after each optimizer step (EMA updates, ...).
    """

    name: ClassVar[str] = ""
    # The method's notebook (`notebooks/<notebook>.ipynb`, source in notebooks/src/): a method that
    # has one is a main method, which the demo runs and the comparison and explorer list. Variants
    # and baselines that only a notebook trains (e.g. IRNet's contour baseline) leave it None; a
    # subclass is a main method only if it declares a notebook itself.
    notebook: ClassVar[str | None] = None
    # DDP must be told when some parameters get no gradient in a step (e.g. a branch switched on late).
    find_unused_parameters: ClassVar[bool] = False
    # Keys of the batch the method needs beyond image and label (e.g. "saliency").
    requires: ClassVar[tuple[str, ...]] = ()
    # Changes to the training recipe of a preset for this method, e.g. a shorter schedule where the
    # method costs several times a CAM per image: {"quick": {"epochs": 3}}.
    recipe_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    # Raised when a code change alters what training computes: it enters the config hash, so runs
    # trained by the earlier code get a folder of their own instead of being served as current
    # (trained models are cached by config, not by code).
    revision: ClassVar[int] = 0
    # "cam": the backbone starts from the CAM baseline run's, as the papers' start from an ImageNet
    # classifier; the orchestrator loads it once before training (see `declare_backbone_init`).
    backbone_init: str | None = None

    def __init__(self, num_classes: int, backbone: Backbone, *, scale: ScalePolicy = PAPER_SCALE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        # Converts the paper's size-dependent settings (scales, radii, rates) to this data's images.
        self.scale = scale

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch: they get the larger learning rate (IRNet's 10x)."""
        raise NotImplementedError

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no image-level classifier")

    def image_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K): how sure the network is that each class is in each image (> 0.5: predicted)."""
        return torch.sigmoid(self.image_logits(images).float())

    def after_optimizer_step(self, progress: float) -> None:
        return None

    def declare_backbone_init(self, backbone_init: str | None) -> None:
        """Start the backbone from the CAM run (`"cam"`) or not (None). A buffer saved with the
        model records that it was done, so a resumed run does not do it twice."""
        if backbone_init not in (None, "cam"):
            raise ValueError(f"backbone_init must be None or 'cam', got {backbone_init!r}")
        self.backbone_init = backbone_init
        self.initialized: torch.Tensor
        self.register_buffer("initialized", torch.tensor(False))

    def start_backbone_from(self, source: "WSSSMethod") -> None:
        self.backbone.load_state_dict(source.backbone.state_dict())
        self.initialized.fill_(True)

    def write_class_maps(self, experiment: RunView, split: str, out: Path) -> None:
        """The class-map stage (cached by the run): the trained network's `class_maps` over `split`
        with the run's test-time scales and flips, one npz per image in `out` (`wsss.inference`). A
        method with other per-image outputs from the same network pass writes them here too, in a
        subfolder (shape cues: its decoder masks), so that the images are not run twice."""
        infer_class_maps(experiment.inference_method().class_maps, experiment.dataset(split), out,
                         **class_map_settings(experiment))

    def pseudo_labels(self, experiment: RunView, split: str) -> Path | None:
        """Final pseudo masks of `split` as a folder of label PNGs, for methods whose paper refines
        class maps its own way (random walk, SPR, a decoder's output). None: the shared path,
        thresholded class maps at the background threshold chosen on the train split."""
        return None

    def training_masks(self, experiment: RunView, split: str) -> dict[str, Path]:
        """Per-image label folders ({name: folder of `<id>.png`}) the training batches of `split`
        need, made here from earlier stages (SANCE: its CAM seeds). They are augmented with the
        image (255 on crop padding) and arrive as `batch[f"{name}_mask"]`, (B, H, W) int64."""
        return {}

    def saliency_folder(self, experiment: RunView) -> Path | None:
        """Folder of the saliency maps (`<id>.png`) for methods that `require` saliency; None: the
        dataset's own (`ExperimentConfig.saliency_dir`, else `<root>/SaliencyMaps`)."""
        return None

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at the base learning rate, new layers at `lr_mult` times it."""
        new_ids = {id(p) for m in self.new_modules() for p in m.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        old = [p for p in trainable if id(p) not in new_ids]
        new = [p for p in trainable if id(p) in new_ids]
        return [{"params": old, "lr_mult": 1.0, "name": "backbone"}, {"params": new, "lr_mult": None, "name": "new"}]


def class_map_settings(experiment: RunView) -> dict[str, Any]:
    """`infer_class_maps`' settings for a run: its test-time scales and flips, its device, bf16
    when it trained in bf16 (a run is read in the precision it learnt in), and as many loader
    processes as its training had."""
    return dict(scales=experiment.tta_scales(), flip=experiment.config.flip, device=experiment.device,
                progress=experiment.progress, amp=bool(experiment.config.train.amp),
                num_workers=experiment.config.train.num_workers)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The multi-label soft-margin loss every CAM paper trains with."""
    return F.multilabel_soft_margin_loss(logits, labels)


def gap_cam_logits(features: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
    """Image scores as IRNet computes them: global average pooling, then the 1x1 classifier."""
    return classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)


def cam_from_features(features: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
    """CAM = ReLU(W^T f) at every location: the classifier applied densely."""
    return F.relu(F.conv2d(features, classifier.weight))


def valid_at(valid: torch.Tensor | None, size: tuple[int, int] | torch.Size) -> torch.Tensor | None:
    """(B, H, W) crop-padding mask at feature resolution: a location is valid when most of its cell is image."""
    if valid is None:
        return None
    return F.interpolate(valid[:, None].float(), size=tuple(size), mode="area")[:, 0] > 0.5


_REGISTRY: dict[str, type[WSSSMethod]] = {}


def register_method(cls: type[WSSSMethod]) -> type[WSSSMethod]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def main_methods() -> list[str]:
    """The registered methods that have a notebook, in the order of their notebooks."""
    _import_all()
    main = [n for n, c in _REGISTRY.items() if c.__dict__.get("notebook")]  # declared, not inherited
    return sorted(main, key=lambda n: (_REGISTRY[n].notebook, n))


def method_class(name: str) -> type[WSSSMethod]:
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_method(name: str, num_classes: int, backbone: str = "small", pretrained: str | None = None,
                 backbone_options: dict[str, Any] | None = None, scale: ScalePolicy = PAPER_SCALE,
                 **options: Any) -> WSSSMethod:
    """Instantiate a registered method on a named backbone for images of the size `scale` converts
    to (default: the papers' VOC size); `options` are the method's own knobs."""
    net = build_backbone(backbone, pretrained, **(backbone_options or {}))
    return method_class(name)(num_classes, net, scale=scale, **options)


def _import_all() -> None:
    import importlib
    import pkgutil

    import wsss.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"wsss.methods.{info.name}")

