"""Reader for a PASCAL VOC 2012 layout folder (real VOC, VOC + SBD, or SynthVOC).

One code path serves every dataset: point `root` at `VOCdevkit/VOC2012` or at a generated
SynthVOC tree. Every problem with the files is reported with the file's path and what is wrong;
nothing is silently skipped or guessed.
"""
from __future__ import annotations

import argparse
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from wsss.data.transforms import resize_saliency
from wsss.io import IGNORE_INDEX, DatasetError, atomic_path, load_label_dict, read_id_list

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# Image modes PIL can turn into RGB without losing meaning.
_CONVERTIBLE_MODES = {"L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F", "1", "LAB", "HSV"}


@dataclass(frozen=True)
class VOCLayout:
    """Where the parts of a VOC-layout dataset live. Defaults follow VOC2012 (+ SBD, + SynthVOC)."""

    root: Path
    image_dir: Path
    mask_dir: Path | None
    saliency_dir: Path | None
    list_dir: Path
    cls_labels: Path | None
    labels_txt: Path | None

    @classmethod
    def discover(
        cls,
        root: str | os.PathLike,
        *,
        mask_dir: str | os.PathLike | None = None,
        saliency_dir: str | os.PathLike | None = None,
    ) -> "VOCLayout":
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset root {root} does not exist or is not a folder")
        image_dir = root / "JPEGImages"
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir} is missing: a VOC-layout dataset keeps its images there")
        list_dir = root / "ImageSets" / "Segmentation"
        if not list_dir.is_dir():
            raise DatasetError(f"{list_dir} is missing: it holds the split lists (train.txt, val.txt, ...)")
        if mask_dir is None:
            # SBD's augmented masks cover train_aug; VOC's own masks cover train/val only.
            for name in ("SegmentationClassAug", "SegmentationClass"):
                if (root / name).is_dir():
                    mask_dir = root / name
                    break
        elif not Path(mask_dir).is_absolute():
            mask_dir = root / mask_dir
        if saliency_dir is None:
            saliency_dir = root / "SaliencyMaps" if (root / "SaliencyMaps").is_dir() else None
        else:
            saliency_dir = Path(saliency_dir) if Path(saliency_dir).is_absolute() else root / saliency_dir
            if not saliency_dir.is_dir():
                raise DatasetError(f"saliency folder {saliency_dir} does not exist")
        cls_labels = root / "cls_labels.npy"
        labels_txt = root / "labels.txt"
        return cls(
            root=root,
            image_dir=image_dir,
            mask_dir=Path(mask_dir) if mask_dir is not None else None,
            saliency_dir=saliency_dir,
            list_dir=list_dir,
            cls_labels=cls_labels if cls_labels.is_file() else None,
            labels_txt=labels_txt if labels_txt.is_file() else None,
        )

    def class_names(self) -> tuple[str, ...]:
        """Foreground class names: labels.txt when present (SynthVOC), else the 20 VOC classes."""
        if self.labels_txt is None:
            return VOC_CLASS_NAMES
        names = tuple(line.strip() for line in self.labels_txt.read_text().splitlines() if line.strip())
        if not names:
            raise DatasetError(f"{self.labels_txt} lists no class names")
        return names

    def split_ids(self, split: str) -> list[str]:
        path = self.list_dir / f"{split}.txt"
        if not path.is_file():
            available = sorted(p.stem for p in self.list_dir.glob("*.txt"))
            raise DatasetError(f"split list {path} does not exist; available splits: {available}")
        return read_id_list(path)


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, converting grayscale/RGBA/palette/CMYK; clear errors."""
    if not path.is_file():
        raise DatasetError(f"image {path} is missing")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "RGB":
                return np.array(img, dtype=np.uint8)  # writable: pydensecrf and in-place ops need it
            if img.mode not in _CONVERTIBLE_MODES:
                raise DatasetError(f"image {path} has mode {img.mode!r}, which cannot be converted to RGB")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Composite on black rather than dropping alpha blindly: transparent pixels have
                # undefined colour in many files.
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"), dtype=np.uint8)
            if img.mode in ("I", "I;16", "F"):
                arr = np.asarray(img, dtype=np.float64)
                arr = (255.0 * (arr - arr.min()) / max(np.ptp(arr), 1e-12)).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"image {path} cannot be read: {exc}") from exc


def read_mask(path: Path) -> np.ndarray:
    """Read a class-index mask (palette or grayscale PNG) as (H, W) uint8."""
    if not path.is_file():
        raise DatasetError(f"mask {path} is missing")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise DatasetError(
                    f"mask {path} has mode {img.mode!r}; masks must hold class indices "
                    "(palette 'P' or grayscale 'L' PNG), not colours"
                )
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"mask {path} cannot be read: {exc}") from exc


def read_saliency(path: Path) -> np.ndarray:
    """Read a saliency map as (H, W) float32 in [0, 1]."""
    if not path.is_file():
        raise DatasetError(f"saliency map {path} is missing")
    try:
        with Image.open(path) as img:
            img.load()
            gray = img.convert("L") if img.mode != "L" else img
            return np.asarray(gray, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"saliency map {path} cannot be read: {exc}") from exc


def load_cls_labels(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    """Load `cls_labels.npy` ({id: multi-hot}) in either the EPS (str keys) or IRNet (int keys) format."""
    labels: dict[str, np.ndarray] = {}
    for key, vec in load_label_dict(path).items():
        if vec.shape[0] != num_classes:
            raise DatasetError(
                f"{path}: label vector of {key!r} has length {vec.shape[0]}, expected {num_classes} "
                "(one entry per foreground class)"
            )
        labels[_canonical_id(key)] = vec
    return labels


def _canonical_id(key: Any) -> str:
    # IRNet stores 2007_000032 as the integer 2007000032; EPS stores the string.
    if isinstance(key, (int, np.integer)):
        s = str(int(key))
        return f"{s[:4]}_{s[4:]}"
    return str(key)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot image label derived from a mask (used when cls_labels.npy is absent)."""
    present = np.unique(mask)
    present = present[(present > 0) & (present != IGNORE_INDEX)]
    vec = np.zeros(num_classes, dtype=np.float32)
    vec[present.astype(np.int64) - 1] = 1.0
    return vec


Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]


class VOCDataset(torch.utils.data.Dataset):
    """Samples of a VOC-layout split as dicts of numpy arrays, then tensors after `transform`.

    Keys: `id`, `image` (H, W, 3 uint8), `label` (K float32 multi-hot), and when available
    `mask` (H, W uint8, 255 = ignore) and `saliency` (H, W float32 in [0, 1]). `extra_masks`
    ({name: folder of <id>.png}) adds per-image label maps under `<name>_mask` (e.g. a second
    stage's CAM seeds), which the transforms move with the image like `mask`. The transform
    receives a generator seeded from (seed, epoch, index), so augmentation is reproducible,
    independent of worker count, and identical after a resume.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        transform: Transform | None = None,
        with_mask: bool = True,
        with_saliency: bool = False,
        mask_dir: str | os.PathLike | None = None,
        saliency_dir: str | os.PathLike | None = None,
        extra_masks: Mapping[str, str | os.PathLike] | None = None,
        ids: Sequence[str] | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.layout = VOCLayout.discover(root, mask_dir=mask_dir, saliency_dir=saliency_dir)
        self.split = split
        self.class_names = self.layout.class_names()
        self.num_classes = len(self.class_names)
        self.ids = list(ids) if ids is not None else self.layout.split_ids(split)
        self.transform = transform
        self.with_mask = with_mask
        self.with_saliency = with_saliency
        self.seed = seed
        self.epoch = 0
        if with_mask and self.layout.mask_dir is None:
            raise DatasetError(f"{self.layout.root} has no SegmentationClass(Aug) folder but masks were requested")
        if with_saliency and self.layout.saliency_dir is None:
            raise DatasetError(
                f"{self.layout.root} has no SaliencyMaps folder; pass saliency_dir= to point at your saliency maps"
            )
        self.extra_masks = {name: Path(folder) for name, folder in (extra_masks or {}).items()}
        for name, folder in self.extra_masks.items():
            if not folder.is_dir():
                raise DatasetError(f"label folder {folder} given for extra mask {name!r} does not exist")
        self._labels = self._load_labels()
        self._cache: dict[int, Sample] | None = {} if cache else None

    def _load_labels(self) -> dict[str, np.ndarray]:
        if self.layout.cls_labels is not None:
            labels = load_cls_labels(self.layout.cls_labels, self.num_classes)
            missing = [i for i in self.ids if i not in labels]
            if missing:
                raise DatasetError(
                    f"{self.layout.cls_labels} has no label for {len(missing)} listed id(s), e.g. {missing[:3]}"
                )
            return {i: labels[i] for i in self.ids}
        if self.layout.mask_dir is None:
            raise DatasetError(f"{self.layout.root} has neither cls_labels.npy nor masks to derive image labels from")
        return {i: labels_from_mask(self._read_classes(self.layout.mask_dir / f"{i}.png"), self.num_classes)
                for i in self.ids}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, index: int) -> np.ndarray:
        return self._labels[self.ids[index]]

    def load(self, index: int) -> Sample:
        """The raw, validated sample (no augmentation)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample_id = self.ids[index]
        image = read_rgb(self.layout.image_dir / f"{sample_id}.jpg")
        sample: Sample = {"id": sample_id, "image": image, "label": self._labels[sample_id]}
        if self.with_mask:
            sample["mask"] = self._read_label_map(self.layout.mask_dir / f"{sample_id}.png", image.shape[:2])
        for name, folder in self.extra_masks.items():
            sample[f"{name}_mask"] = self._read_label_map(folder / f"{sample_id}.png", image.shape[:2])
        if self.with_saliency:
            path = self.layout.saliency_dir / f"{sample_id}.png"
            sal = read_saliency(path)
            if sal.shape != image.shape[:2]:
                warnings.warn(f"saliency map {path} is {sal.shape[1]}x{sal.shape[0]}, image is "
                              f"{image.shape[1]}x{image.shape[0]}: resized to the image", stacklevel=2)
                sal = resize_saliency(sal, image.shape[:2])
            sample["saliency"] = sal
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def _read_classes(self, path: Path) -> np.ndarray:
        """A label map whose values are all classes of the dataset (or ignore)."""
        mask = read_mask(path)
        bad = (mask > self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(f"mask {path} holds class index {int(mask[bad].max())}, "
                               f"but the dataset has {self.num_classes} classes")
        return mask

    def _read_label_map(self, path: Path, size_hw: tuple[int, int]) -> np.ndarray:
        mask = self._read_classes(path)
        if mask.shape != size_hw:
            raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{size_hw[1]}x{size_hw[0]}")
        return mask

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.load(index))
        sample["index"] = index
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            sample = self.transform(sample, rng)
        return sample


# ----------------------------------------------------------------------------------------------
# Image labels from VOC itself: `wsss data voc-labels ROOT`

_VOC_ID = re.compile(r"^\d{4}_\d{6}$")


def labels_from_annotation(path: Path, class_names: Sequence[str]) -> np.ndarray:
    """Multi-hot label of the objects an `Annotations/<id>.xml` names (every object, difficult ones
    included, as IRNet's make_cls_labels reads them)."""
    try:
        names = [obj.findtext("name", "").strip() for obj in ET.parse(path).getroot().iter("object")]
    except ET.ParseError as exc:
        raise DatasetError(f"annotation {path} cannot be read: {exc}") from exc
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise DatasetError(f"annotation {path} names classes {unknown} that are not among the dataset's classes")
    vec = np.zeros(len(class_names), dtype=np.float32)
    vec[[class_names.index(n) for n in names]] = 1.0
    return vec


def image_labels(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """{id: multi-hot label} for every id of every split list of a VOC-layout folder: from
    `Annotations/<id>.xml` where present (VOC's object annotations), else from the id's
    segmentation mask (SBD's `SegmentationClassAug`, or `SegmentationClass`)."""
    layout = VOCLayout.discover(root)
    names = layout.class_names()
    ids = sorted({i for split in sorted(layout.list_dir.glob("*.txt")) for i in layout.split_ids(split.stem)})
    labels = {}
    for i in ids:
        xml = layout.root / "Annotations" / f"{i}.xml"
        if xml.is_file():
            labels[i] = labels_from_annotation(xml, names)
        elif layout.mask_dir is not None and (layout.mask_dir / f"{i}.png").is_file():
            labels[i] = labels_from_mask(read_mask(layout.mask_dir / f"{i}.png"), len(names))
        else:
            raise DatasetError(f"image {i} (listed in {layout.list_dir}) has neither {xml} nor a mask to take its "
                               "label from")
    return labels


def write_cls_labels(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """`cls_labels.npy` in IRNet's format ({int id: float32 multi-hot}, 2007_000032 -> 2007000032),
    or with string keys (EPS's format) when an id is not VOC-shaped; returns its path."""
    labels = image_labels(root)
    voc_shaped = all(_VOC_ID.match(i) for i in labels)
    table = {(int(i.replace("_", "")) if voc_shaped else i): v for i, v in labels.items()}
    out = Path(out) if out else Path(root) / "cls_labels.npy"
    with atomic_path(out, ".npy") as tmp:
        np.save(tmp, table)  # a dict: np.save pickles it, as IRNet's script does; wsss reads it without pickle
    return out


def add_voc_labels_command(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser("voc-labels", help="write cls_labels.npy (IRNet's format) from VOC's annotations or masks")
    p.add_argument("root", type=Path, help="a VOC-layout folder, e.g. VOCdevkit/VOC2012")
    p.add_argument("--out", type=Path, default=None, help="default: ROOT/cls_labels.npy")
    p.set_defaults(func=_cmd_voc_labels)


def _cmd_voc_labels(args: argparse.Namespace) -> int:
    out = write_cls_labels(args.root, args.out)
    print(f"wrote {out}")
    return 0
