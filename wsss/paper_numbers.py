"""The papers' own PASCAL VOC 2012 numbers (mIoU, %), transcribed from /work/shared/papers.

These are the PAPERS' results on real VOC with ImageNet backbones, quoted for orientation next to
ours on SynthVOC; they are never compared number for number. Each entry names the table it comes
from. `pseudo_train`: pseudo masks (or CAMs) evaluated on VOC train; `seg_val` / `seg_test`:
the final segmentation network on val / test. None: the paper does not report it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PaperNumbers:
    method: str  # our registered method name
    paper: str
    cam_train: float | None  # the method's CAMs (before any refinement) on train
    pseudo_train: float | None  # the pseudo masks the final network learns from, on train
    seg_val: float | None
    seg_test: float | None
    segmentation_net: str
    source: str  # tables / sections the numbers come from

    def as_row(self) -> dict[str, object]:
        return asdict(self)


PAPER_NUMBERS: tuple[PaperNumbers, ...] = (
    PaperNumbers("cam", "CAM baseline as IRNet reports it (Ahn et al., CVPR 2019), quoted by VWL and EPS",
                 cam_train=48.3, pseudo_train=66.5, seg_val=63.5, seg_test=64.8,
                 segmentation_net="DeepLab, ResNet-50 (IRNet)",
                 source="VWL Table 2 (CAM 48.3, + IRNet 66.5 train); VWL Table 3 (IRNet 63.5 / 64.8); "
                        "EPS Table 4 gives CAM 48.0"),
    PaperNumbers("eps", "Railroad is not a Train (EPS, Lee et al., CVPR 2021)",
                 cam_train=None, pseudo_train=69.4, seg_val=71.0, seg_test=71.8,
                 segmentation_net="DeepLab-V1, ResNet-101 (V2: 70.9 / 70.8)",
                 source="Table 4 (pseudo masks on train: 69.4, w/ CRF 71.4); Table 6 (ResNet-101)"),
    PaperNumbers("vwl", "Learning Visual Words (VWL, Ru et al., IJCAI 2021)",
                 cam_train=52.9, pseudo_train=67.7, seg_val=67.2, seg_test=67.3,
                 segmentation_net="DeepLabv2, ResNet-101, w/ CRF (w/o CRF 66.3 / 66.3)",
                 source="Table 1-2 (CAM 52.9 train, 52.0 val; + IRNet 67.7 train); Table 3"),
    PaperNumbers("sance", "Towards Noiseless Object Contours (SANCE, Li et al., CVPR 2022)",
                 cam_train=None, pseudo_train=76.9, seg_val=70.9, seg_test=72.2,
                 segmentation_net="DeepLab-ASPP, ResNet-101 (Ours-sal with saliency: 72.0 / 72.9)",
                 source="Table 1 (SANCE+TTA pseudo labels on train 76.9; IRNet re-implementation 66.6); Table 5"),
    PaperNumbers("rcm_mam", "Exploring Pixel-level Self-supervision (RCM + MAM, Yoon et al.)",
                 cam_train=63.7, pseudo_train=71.0, seg_val=69.7, seg_test=70.9,
                 segmentation_net="DeepLab-LargeFOV, ResNet-38",
                 source="Table 1 (CAM 63.7, w/ CRF 67.7, baseline 48.4); Sec. 4.4 (+ random walk 71.0); Table 3"),
    PaperNumbers("shape_cues", "Exploiting Shape Cues (SCM + SPR, Kho et al.)",
                 cam_train=None, pseudo_train=68.9, seg_val=66.4, seg_test=66.8,
                 segmentation_net="single-stage WideResNet-38 w/ CRF (w/o CRF 65.2 / 65.6; two-stage 69.5 / 70.5)",
                 source="Table 5 (#4: 68.9 train, 65.2 val, baseline 42.7); Table 1"),
)

# Fully supervised references the papers print (the denominators of a weak/full ratio).
PAPER_FULLY_SUPERVISED: tuple[dict[str, object], ...] = (
    {"network": "DeepLabv2, ResNet-101", "seg_val": 76.3, "seg_test": 77.6, "source": "VWL Table 3"},
    {"network": "WideResNet-38", "seg_val": 80.8, "seg_test": 82.5, "source": "VWL Table 3; Shape Cues Table 1"},
    {"network": "DeepLabV3, ResNet-101", "seg_val": None, "seg_test": 85.7, "source": "Shape Cues Table 1"},
)


def paper_numbers(method: str) -> PaperNumbers | None:
    return next((p for p in PAPER_NUMBERS if p.method == method), None)
