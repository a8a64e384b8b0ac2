"""The final stage every WSSS paper ends with: a segmentation network trained on pseudo masks.

A folder of label PNGs (`<id>.png`, 0 = background, k + 1 = class k, 255 = ignored) is all the
stage needs, so it serves every method (its `final_pseudo_masks`) and, fed the ground-truth
masks, gives the fully supervised upper bound the papers' weak/full ratio divides by.

Models: torchvision's DeepLabV3-ResNet50 for VOC-scale work (backbone weights from a local file
or "imagenet"; never a download unless asked), and for SynthVOC on a CPU our `small` backbone with
a DeepLab v3+ decoder (`small_deeplabv3plus`, the default: ASPP at stride 8 refined with the
stride-4 features) or the ASPP head alone (`small_aspp`, the earlier default). The small backbone
here has two residual blocks per stage: the shipped one-block weights fill the first, the second
starts fresh. Trained on ground truth at quick (val mIoU, no CRF, seed 0): ASPP head, 8 epochs,
10x head rate 60.3; v3+ decoder 61.9; new layers at the base rate 64.0; 24 epochs 73.1-73.8; two
blocks per stage 76.0; 48 epochs 81.5 (83.7 with CRF); 96 epochs 84.8, and 84.3 at seed 1 (85.7
and 85.9 with CRF); 192 epochs 86.1, and 85.6 at seed 1 (87.5 and 86.6 with CRF; the recipe
below). What did not help: a lower rate (5e-4: 61.2), a higher one (6e-3, 12 epochs: 61.1), four
more dilated blocks at stride 8 (63.1 at 8 epochs), batch 8 for the same number of steps (68.5 at
12 epochs), output stride 4 (a 24-cell map; 72.8 vs 73.8 at one block, 77.3 vs 76.0 at two,
2.2-2.5x the time), weight decay 0.05 (76.0, unchanged), a scale range of (0.5, 1.5) (72.9;
(0.9, 1.1): 77.1, within a seed's spread), a 2x wider backbone from scratch (training loss 0.64
after 5 epochs against 0.35: stopped).
The errors the 24-epoch network made were whole objects, not borders: 18.5% of the val objects
had under 20% of their pixels right (28.5% of those under 300 px), mostly small two- or
three-tone shapes labelled background. The papers' ratio weak/full needs this bound to be a
bound: a network that underfits ground truth divides by too little. Training goes through the shared loop
(`wsss.train.train`), masks through the dataset's `extra_masks` (augmented with the image).
Inference: multi-scale + flip softmax averaging, optional dense CRF. Like the Experiment stages,
each step caches on disk in a run directory keyed by the hash of (mask source + settings).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from wsss.progress import tqdm

from wsss.data.transforms import train_transform
from wsss.data.voc import VOCDataset
from wsss.evaluation import evaluate_label_dir
from wsss.cache import cached_folder, cached_json, code_version, digest
from wsss.experiment import PRETRAINED_DEFAULTS, TRAIN_PRESETS, Experiment
from wsss.inference import multiscale_maps
from wsss.io import IGNORE_INDEX, save_label_png, write_json
from wsss.methods.base import Batch, WSSSMethod
from wsss.models.backbones import build_backbone, load_pretrained, weights_digest
from wsss.models.fusion import folded_for_inference
from wsss.scale import PAPER_SCALE, ScalePolicy
from wsss.models.heads import DeepLabV3PlusHead, deeplabv3_head
from wsss.paths import portable, runs_dir
from wsss.refine.crf import CRFParams, dense_crf
from wsss.train import TrainConfig, TrainResult, load_model, split_train_overrides, to_device, train

MODELS = ("small_deeplabv3plus", "small_aspp", "deeplabv3_resnet50")
MASK = "target"  # the training labels arrive as batch["target_mask"]
GROUND_TRUTH = "ground_truth"

# Final-stage recipes. SynthVOC's: the CAM recipe with the new layers at the base rate (AdamW at 10x,
# 2e-2, leaves the decoder worse: 61.9 vs 64.0 val mIoU on ground truth at 8 epochs) and 24x the
# epochs (the network underfits: on ground truth, two blocks per stage, 24 epochs 76.0, 48 epochs
# 81.5, 96 epochs 84.8, 192 epochs 86.1); VOC's: the DeepLab schedule IRNet/EPS use (SGD, lr 0.01 (10x head), poly).
SEG_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(TRAIN_PRESETS["tiny"], new_layer_lr_mult=1.0),
    "quick": dict(TRAIN_PRESETS["quick"], epochs=192, new_layer_lr_mult=1.0),
    "full": dict(TRAIN_PRESETS["full"], epochs=30, new_layer_lr_mult=1.0),
    "voc": dict(epochs=30, batch_size=16, lr=0.01, optimizer="sgd", weight_decay=1e-4, ckpt_every=500),
}


ASPP_RATES: tuple[int, ...] = (6, 12, 18)  # DeepLabV3's, at output stride 16
PAPER_OUTPUT_STRIDE = 16
SMALL_STRIDE = 8  # the small backbone's output stride
SMALL_BLOCKS = (2, 2, 2, 2)  # residual blocks per stage of the final network's small backbone
# Raised when a code change alters what the network trains (1: ASPP rates from the scale policy;
# 2: two blocks per stage; 3: 96 epochs at quick; 4: 192 epochs at quick).
NET_REVISION = 4


class SegmentationNet(WSSSMethod):
    """A segmentation network as a `WSSSMethod`, so the shared training loop trains it.

    Not registered as a WSSS method: it learns from masks, not image labels. `forward` is the
    pixel-wise cross-entropy against `batch["target_mask"]` (255 ignored); `logits` gives
    (B, K + 1, H, W) scores at the input size.
    """

    name = "segmentation"

    def __init__(self, num_classes: int, model: str = "small_deeplabv3plus", pretrained: str | os.PathLike | None = None,
                 atrous_rates: tuple[int, ...] | None = None, scale: ScalePolicy = PAPER_SCALE,
                 blocks: tuple[int, ...] = SMALL_BLOCKS) -> None:
        # DeepLabV3's rates at output stride 16, converted by the scale policy for the small
        # backbone's maps ((2, 5, 7) on 96 px images); torchvision's ResNet-50 keeps its own.
        # `blocks`: residual blocks per stage of the small backbone; the shipped one-block weights
        # fill each stage's first block, the others start fresh.
        rates = atrous_rates or scale.sizes(ASPP_RATES, SMALL_STRIDE, PAPER_OUTPUT_STRIDE)
        if model.startswith("small"):
            backbone = build_backbone("small", pretrained, blocks=blocks, fresh_extra_blocks=True)
        if model == "small_deeplabv3plus":
            head: nn.Module = DeepLabV3PlusHead(backbone.out_channels, backbone.channels[0], num_classes + 1, rates)
        elif model == "small_aspp":
            head = deeplabv3_head(backbone.out_channels, num_classes + 1, rates, width=128)
        elif model == "deeplabv3_resnet50":
            import torchvision  # not at module import: see wsss.models.backbones

            net = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                     num_classes=num_classes + 1, aux_loss=False)
            if pretrained is not None:
                load_pretrained(net.backbone, "resnet50", pretrained)
            backbone, head = net.backbone, net.classifier
        else:
            raise ValueError(f"unknown segmentation model {model!r}; available: {MODELS}")
        super().__init__(num_classes, backbone, scale=scale)
        self.model = model
        self.head = head

    def new_modules(self) -> list[nn.Module]:
        return [self.head]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images)
        if isinstance(self.head, DeepLabV3PlusHead):
            scores = self.head(feats[0], feats[-1])  # stride-4 skip + deepest stage
        else:
            scores = self.head(feats[-1] if isinstance(feats, list) else feats["out"])  # ours: list; torchvision's: dict
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, batch: Batch, progress: float = 0.0) -> dict[str, torch.Tensor]:
        target = batch.get(f"{MASK}_mask")
        if target is None:
            raise KeyError(f"batch has no '{MASK}_mask': build the dataset with extra_masks={{'{MASK}': folder}}")
        loss = F.cross_entropy(self.logits(batch["image"]).float(), target, ignore_index=IGNORE_INDEX)
        return {"loss": loss, "ce": loss.detach()}

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of background + classes (what multi-scale inference averages)."""
        return self.logits(images).float().softmax(dim=1)


@dataclass
class SegConfig:
    """Settings of the final stage; everything here (plus the mask source) keys its run dir."""

    model: str = "small_deeplabv3plus"
    # small_aspp: as ExperimentConfig.pretrained; deeplabv3_resnet50: a ResNet-50 state-dict file or "imagenet"
    pretrained: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    blocks: tuple[int, ...] = SMALL_BLOCKS  # small models: residual blocks per backbone stage
    crop_size: int | None = None  # None: the experiment's crop size
    scale_range: tuple[float, float] = (0.7, 1.3)
    scales: tuple[float, ...] = (1.0, 0.75, 1.25)  # inference scales (softmax averaged), with flips
    flip: bool = True
    crf: CRFParams = field(default_factory=CRFParams)

    @classmethod
    def for_preset(cls, preset: str = "quick", voc: bool = False, **overrides: Any) -> "SegConfig":
        """The preset's recipe (DeepLabV3-ResNet50 with VOC's when `voc`); None overrides are ignored,
        keys of TrainConfig may be given at top level."""
        train_over, overrides = split_train_overrides(overrides)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown final-stage settings {sorted(unknown)}")
        if voc:
            overrides.setdefault("model", "deeplabv3_resnet50")
        elif overrides.get("model", cls.model).startswith("small") and preset in PRETRAINED_DEFAULTS:
            overrides.setdefault("pretrained", PRETRAINED_DEFAULTS[preset])
        recipe = SEG_PRESETS["voc" if voc else preset]
        return cls(train=TrainConfig(**{**recipe, **train_over}), **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(asdict(self), default=str))
        for k in ("progress", "num_workers", "ckpt_every", "log_every"):
            d["train"].pop(k)
        return d


class FinalStage:
    """Train / predict / evaluate a segmentation network on one folder of training masks.

    Build it with `FinalStage.from_experiment(exp)` (the method's final pseudo masks of its train
    split) or `FinalStage.ground_truth(exp)` (the upper bound on the same images and recipe).
    """

    def __init__(self, experiment: Experiment, masks: str | os.PathLike, source: dict[str, Any],
                 config: SegConfig | None = None, progress: bool = True) -> None:
        self.experiment = experiment
        self.masks = Path(masks)
        if not self.masks.is_dir():
            raise FileNotFoundError(f"training masks {self.masks} do not exist")
        self.source = source
        self.config = config or SegConfig.for_preset(experiment.config.preset,
                                                     voc=experiment.is_real_voc())
        self.progress = progress
        tag = "gt" if source.get("kind") == GROUND_TRUTH else experiment.config.method
        self.run_dir = Path(experiment.config.run_root or runs_dir()) / f"final-{tag}-{self.config.model}-{self.config_hash()}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self._config_record())
        self._net: SegmentationNet | None = None

    @classmethod
    def from_experiment(cls, experiment: Experiment, config: SegConfig | None = None,
                        masks: str | os.PathLike | None = None, progress: bool = True) -> "FinalStage":
        """Train on `masks` (default: the method's `final_pseudo_masks` of its train split)."""
        masks = Path(masks) if masks else experiment.final_pseudo_masks(experiment.config.train_split)
        try:
            rel = str(masks.resolve().relative_to(experiment.run_dir.resolve()))
        except ValueError:
            rel = portable(masks)
        source = {"kind": "pseudo", "method": experiment.config.method, "run": experiment.run_dir.name,
                  "run_config_hash": experiment.config.config_hash(), "masks": rel}
        return cls(experiment, masks, source, config, progress)

    @classmethod
    def ground_truth(cls, experiment: Experiment, config: SegConfig | None = None,
                     progress: bool = True) -> "FinalStage":
        """The fully supervised upper bound: the dataset's own masks (SegmentationClass)."""
        layout = experiment.dataset(experiment.config.train_split).layout
        source = {"kind": GROUND_TRUTH, "data": portable(experiment.data_root), "masks": portable(layout.mask_dir)}
        return cls(experiment, layout.mask_dir, source, config, progress)

    # ------------------------------------------------------------------ bookkeeping

    def config_hash(self) -> str:
        key = {"source": {k: v for k, v in self.source.items() if k != "run"}, "seg": self.config.to_dict(),
               "revision": NET_REVISION,
               "data": portable(self.experiment.data_root), "train_split": self.experiment.config.train_split}
        digest = weights_digest(self.config.pretrained)
        if digest:
            key["pretrained_digest"] = digest
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    def _config_record(self) -> dict[str, Any]:
        return {"source": self.source, "seg": self.config.to_dict(), "data": portable(self.experiment.data_root),
                "train_split": self.experiment.config.train_split, "config_hash": self.config_hash()}

    @property
    def variant(self) -> str:
        return "GT upper bound" if self.source["kind"] == GROUND_TRUTH else f"{self.experiment.config.method} pseudo"

    def provenance(self, split: str, crf: bool) -> dict[str, Any]:
        """The experiment's provenance with the final stage's own network, scales, config hash and file;
        `pseudo_*` keys say which pseudo masks (run, threshold) it learned from."""
        exp = self.experiment
        pseudo_thr = threshold_of_masks(self.masks) if self.source["kind"] != GROUND_TRUTH else None
        return {**exp.provenance(split, pseudo_thr, crf), "scales": list(self.tta_scales()), "flip": self.config.flip,
                "seed": self.config.train.seed, "config_hash": self.config_hash(),
                "config_file": portable(self.run_dir / "config.json"), "code_version": code_version(),
                "backbone": self.config.model, "pseudo_source": self.source.get("masks"),
                "pseudo_run_config": self.source.get("run_config_hash", "")}

    # ------------------------------------------------------------------ stages

    def crop_size(self) -> int:
        return self.config.crop_size or self.experiment.crop_size()

    def dataset(self) -> VOCDataset:
        exp = self.experiment
        return VOCDataset(exp.data_root, exp.config.train_split,
                          transform=train_transform(self.crop_size(), self.config.scale_range), with_mask=False,
                          extra_masks={MASK: self.masks}, seed=self.config.train.seed, cache=True)

    @property
    def net(self) -> SegmentationNet:
        if self._net is None:
            torch.manual_seed(self.config.train.seed)
            self._net = SegmentationNet(len(self.experiment.class_names), self.config.model, self.config.pretrained,
                                        scale=self.experiment.scale_policy(), blocks=self.config.blocks)
        return self._net

    def train(self, resume: bool = True) -> TrainResult:
        cfg = replace(self.config.train, progress=self.progress and self.config.train.progress)
        return train(self.net, self.dataset(), cfg, self.run_dir, resume=resume)

    def tta_scales(self) -> tuple[float, ...]:
        """The configured inference scales the scale policy keeps for the network's coarsest map."""
        return self.experiment.scale_policy().scales(self.config.scales, self.net.backbone.output_stride)

    def trained_net(self) -> SegmentationNet:
        if not (self.run_dir / "model.pt").is_file():
            self.train()
        return to_device(load_model(self.net, self.run_dir), self.experiment.device).eval()

    def predict(self, split: str | None = None, crf: bool = False) -> Path:
        """Label PNGs of `split` (multi-scale + flip softmax average, optional dense CRF), cached."""
        split = split or self.experiment.config.eval_split
        return cached_folder(self.run_dir / "predictions" / f"{split}{'_crf' if crf else ''}",
                             self._predict_key(split, crf), lambda out: self._write_predictions(split, crf, out),
                             f"predictions of {split}")

    def _predict_key(self, split: str, crf: bool) -> dict[str, Any]:
        self.trained_net()  # trains first when needed: the key names the model file
        return self.experiment.stage_key("predict", split, model_dir=self.run_dir, scales=list(self.tta_scales()),
                                         flip=self.config.flip, crf=asdict(self.config.crf) if crf else None)

    def _write_predictions(self, split: str, crf: bool, out: Path) -> None:
        # Batch norms folded into the convolutions: the same predictions to float rounding, faster.
        net, ds, device = folded_for_inference(self.trained_net()), self.experiment.dataset(split), self.experiment.device
        scales = self.tta_scales()
        for i in tqdm(range(len(ds)), desc=f"segment {split}", disable=not self.progress, dynamic_ncols=True):
            sample = ds[i]
            probs = multiscale_maps(net.class_maps, sample["image"][None].to(device), scales, self.config.flip)[0]
            probs = (probs / probs.sum(dim=0, keepdim=True)).cpu().numpy()
            if crf:
                probs = dense_crf(sample["image_uint8"].numpy(), probs, self.config.crf)
            save_label_png(out / f"{sample['id']}.png", probs.argmax(axis=0).astype(np.uint8))

    def evaluate(self, split: str | None = None, crf: bool = False) -> dict[str, Any]:
        """Scores of the predictions of `split` with provenance (cached as JSON in the run dir)."""
        split = split or self.experiment.config.eval_split
        key = {"stage": "evaluate", "predictions": digest(self._predict_key(split, crf))}
        record = cached_json(self.run_dir / f"eval_{split}{'_crf' if crf else ''}.json", key, lambda: evaluate_label_dir(
            self.predict(split, crf), self.experiment.dataset(split), progress=self.progress))
        summary = self.run_dir / "train_summary.json"
        train_s = json.loads(summary.read_text())["seconds"] if summary.is_file() else None
        return {**record["result"], **self.provenance(split, crf), "code_version": record["code_version"],
                "train_s": train_s}


def threshold_of_masks(masks: str | os.PathLike) -> float | None:
    """The background threshold in a shared pseudo-mask folder name (`train_thr0.30[_crf]`), else None."""
    name = Path(masks).name
    part = name.split("_thr")[-1].split("_")[0] if "_thr" in name else ""
    try:
        return float(part)
    except ValueError:
        return None
