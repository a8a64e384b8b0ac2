"""One experiment = one method on one dataset, its stages writing into one run directory.

Stages (IRNet's named steps): `train` -> `class_maps` -> `sweep` (background threshold) ->
`evaluate` (with/without CRF) -> `pseudo_masks`. Each stage skips work already on disk, so a
notebook re-run, a killed run or a second notebook that needs the same baseline costs nothing.
Every reported row carries its provenance: split, threshold, CRF, scales, seed, config hash and
the code version that computed it. Cached outputs are keyed on everything they depend on (the
split's ids, the data files, the model file, the settings and the code, see `wsss.cache`), so a
changed split, regenerated data, a retrained model or a code edit recomputes them.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch

from wsss.cache import (cached_folder, cached_json, code_fingerprint, code_version, contents_fingerprint, digest,
                        files_fingerprint)
from wsss.data.transforms import eval_transform, train_transform
from wsss.data.voc import VOCDataset
from wsss.evaluation import (DEFAULT_THRESHOLDS, climb_crf_threshold, evaluate_cams, evaluate_label_dir,
                             sweep_cam_thresholds)
from wsss.inference import max_scaled_pixels
from wsss.io import write_json
from wsss.paths import portable, runs_dir
from wsss.methods.base import WSSSMethod, build_method, method_class
from wsss.models.backbones import weights_digest
from wsss.models.fusion import folded_for_inference
from wsss.stages.pseudo_masks import write_pseudo_masks
from wsss.refine.crf import CRFParams
from wsss.scale import MIN_WALK_CELLS, PAPER_SCALE, ScalePolicy
from wsss.train import (RESULT_NEUTRAL_KEYS, TrainConfig, TrainResult, device_named, fast_bf16, load_model,
                        split_train_overrides, to_device, train)

# Training recipes per SynthVOC preset, sized for the machine each preset targets. Without `amp`,
# `for_preset` turns bf16 autocast on where it is fast (`fast_bf16`); tiny, the tests' preset, stays
# fp32 so its numbers are the same on every CPU.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(epochs=2, batch_size=8, lr=2e-3, optimizer="adamw", ckpt_every=50, amp=False),
    "quick": dict(epochs=8, batch_size=16, lr=2e-3, optimizer="adamw", ckpt_every=100),
    "full": dict(epochs=15, batch_size=16, lr=2e-3, optimizer="adamw", ckpt_every=500),
    # Real VOC with an ImageNet ResNet-50: IRNet's recipe.
    "voc": dict(epochs=5, batch_size=16, lr=0.1, optimizer="sgd", weight_decay=1e-4, ckpt_every=500),
}

SYNTHVOC_PRESETS = ("tiny", "quick", "full")

# A random walk's floor (map cells) per SynthVOC preset where it is not the scale policy's
# MIN_WALK_CELLS: the tests' smoke preset, whose numbers are no results (why 32: wsss/scale.py).
WALK_CELLS: dict[str, int] = {"tiny": 32}
# Test-time scales per SynthVOC preset where they are not ExperimentConfig's: the smoke preset drops
# scale 2, whose passes cost more than those of scales 1 and 1.5 together (4 vs 3.25 times the pixels).
TTA_SCALES: dict[str, tuple[float, ...]] = {"tiny": (1.0, 1.5)}

TRAINING_INPUTS = "training_inputs.json"  # in a run folder: digests of the training masks it learned from


class StaleRunError(RuntimeError):
    """A run folder's model was trained on inputs that have changed since."""

# Where the small backbone starts on each SynthVOC preset: the weights `wsss pretrain` made on a
# generated corpus (the papers' ImageNet start); tiny stays random so tests need no file.
PRETRAINED_DEFAULTS: dict[str, str] = {"quick": "synthvoc", "full": "synthvoc"}


@dataclass
class ExperimentConfig:
    method: str = "cam"
    method_options: dict[str, Any] = field(default_factory=dict)
    backbone: str = "small"
    pretrained: str | None = None  # None/"scratch": random init; "synthvoc", "imagenet" or a file
    data_root: str | None = None  # None: the SynthVOC preset, generated on first use
    preset: str = "quick"
    data_seed: int = 0
    train_split: str = "train"
    eval_split: str = "val"
    crop_size: int | None = None  # None: the SynthVOC image size, or 448 for other data
    scale_range: tuple[float, float] = (0.7, 1.3)
    saliency_dir: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    crf: CRFParams = field(default_factory=CRFParams)
    run_root: str | None = None  # None: wsss.paths.runs_dir()
    name: str | None = None

    @classmethod
    def for_preset(cls, preset: str = "quick", **overrides: Any) -> "ExperimentConfig":
        """Defaults of a preset, with `overrides`; keys of TrainConfig may be given at top level.
        Overrides that are None are ignored, so notebook parameters can use None for "preset default"."""
        train_over, overrides = split_train_overrides(overrides)
        root = overrides.get("data_root")
        if root is None and preset not in SYNTHVOC_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; SynthVOC presets: {', '.join(SYNTHVOC_PRESETS)}")
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"data_root {root} does not exist or is not a folder")
        recipe_name = preset
        if root and not (Path(root) / "meta.json").is_file():
            # A folder that SynthVOC did not write (it always writes meta.json) is real data.
            recipe_name = "voc"
            warnings.warn(f"{root} has no meta.json, so it is treated as real PASCAL VOC: IRNet's recipe "
                          f"({TRAIN_PRESETS['voc']}, crops of 448 px unless crop_size is set). A SynthVOC "
                          "tree must keep the meta.json it was written with.", stacklevel=2)
        if overrides.get("backbone", cls.backbone) == "small" and recipe_name in PRETRAINED_DEFAULTS:
            overrides.setdefault("pretrained", PRETRAINED_DEFAULTS[recipe_name])
        if recipe_name in TTA_SCALES:
            overrides.setdefault("scales", TTA_SCALES[recipe_name])
        method = overrides.get("method", cls.method)
        recipe = {**TRAIN_PRESETS[recipe_name], **method_class(method).recipe_overrides.get(recipe_name, {})}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown experiment settings {sorted(unknown)}")
        train = TrainConfig(**{**recipe, **train_over})
        if train.amp is None:  # resolved here, so the run's hash records the precision it trains in
            train.amp = fast_bf16(device_named(train.device))
        return cls(preset=preset, train=train, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "ExperimentConfig":
        """The config a run's config.json records (`to_dict` plus its hash, which must still match)."""
        d = {k: v for k, v in record.items() if k != "config_hash"}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown experiment settings {sorted(unknown)} in the run record")
        d["train"], d["crf"] = TrainConfig(**d["train"]), CRFParams(**d["crf"])
        for key in ("scale_range", "scales", "thresholds"):
            d[key] = tuple(d[key])
        config = cls(**d)
        if record.get("config_hash") not in (None, config.config_hash()):
            raise ValueError(f"the run record's hash {record['config_hash']} is not its config's "
                             f"({config.config_hash()}): it was written by another version of wsss")
        return config

    def config_hash(self) -> str:
        return config_hash(self.to_dict())


def config_hash(config: dict[str, Any]) -> str:
    """Hash of everything in a config record (`ExperimentConfig.to_dict()`, or a run's config.json)
    that changes results: not where runs live, not progress bars, and not method options given at
    their default value, so a notebook that spells out the defaults shares the run of one that does not."""
    d = json.loads(json.dumps(config))
    for k in ("run_root", "name", "config_hash"):
        d.pop(k, None)
    for k in RESULT_NEUTRAL_KEYS:
        d["train"].pop(k, None)
    defaults = method_defaults(d["method"])
    d["method_options"] = {k: v for k, v in d["method_options"].items() if k not in defaults or v != defaults[k]}
    digest = weights_digest(d.get("pretrained"))
    if digest:
        d["pretrained_digest"] = digest
    revision = method_class(d["method"]).revision
    if revision:  # 0 leaves the hashes of runs from before revisions existed as they were
        d["method_revision"] = revision
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def dataset_key(ds: VOCDataset) -> dict[str, str]:
    """What outputs computed over `ds` depend on in its data: its exact ids and the files behind
    them (images, masks, context masks, image labels, SynthVOC's meta.json)."""
    lay = ds.layout
    files = [lay.cls_labels, lay.root / "meta.json", lay.list_dir / f"{ds.split}.txt"]
    files += [lay.image_dir / f"{i}.jpg" for i in ds.ids]
    for folder in (lay.mask_dir, lay.root / "ContextMasks"):
        if folder is not None and folder.is_dir():
            files += [folder / f"{i}.png" for i in ds.ids]
    return {"ids": digest(ds.ids), "files": files_fingerprint(files)}


def experiment_factory(preset: str, progress: bool = True, **shared: Any) -> Callable[..., "Experiment"]:
    """What a notebook builds its runs with: `make(method, **kwargs)` is a run of `method` with the
    notebook's `shared` settings (data_root, backbone, pretrained, epochs, batch_size, lr, seed, ...).
    Keywords of `make` that name an ExperimentConfig or TrainConfig setting (epochs, train_split, ...)
    override the shared ones; every other keyword is a method option. None means "the preset's
    default", so notebook parameters pass straight through."""
    settings = {f.name for f in fields(ExperimentConfig)} | {f.name for f in fields(TrainConfig)}

    def make(method: str, **kwargs: Any) -> Experiment:
        clash = settings & set(method_defaults(method))
        if clash:  # an option spelled like a setting would be taken for the setting
            raise ValueError(f"method {method} has options named like run settings: {sorted(clash)}")
        options = {k: v for k, v in kwargs.items() if k not in settings}
        overrides = {**shared, **{k: v for k, v in kwargs.items() if k in settings}}
        return Experiment(ExperimentConfig.for_preset(preset, method=method, method_options=options, **overrides),
                          progress=progress)

    return make


def method_defaults(method: str) -> dict[str, Any]:
    """The method's keyword defaults, JSON-normalised (tuples become lists, as in config records),
    including those of base classes its `__init__` passes `**options` on to (a subclass's own
    default wins)."""
    defaults: dict[str, Any] = {}
    for cls in method_class(method).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
    return json.loads(json.dumps(defaults, default=str))


class Experiment:
    def __init__(self, config: ExperimentConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.data_root = Path(config.data_root) if config.data_root else self._synthvoc_root()
        name = config.name or f"{config.method}-{config.backbone}-{config.preset}-{config.config_hash()}"
        self.run_dir = Path(config.run_root or runs_dir()) / name
        self._refuse_changed_config()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", {**config.to_dict(), "config_hash": config.config_hash()})
        self._method: WSSSMethod | None = None
        self._datasets: dict[tuple[str, bool], VOCDataset] = {}
        self._data_keys: dict[str, dict[str, str]] = {}
        self._inputs_checked = False

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, progress: bool = True) -> "Experiment":
        """The experiment of an existing run folder, from its config.json (e.g. to load its model)."""
        run_dir = Path(run_dir)
        record = run_dir / "config.json"
        if not record.is_file():
            raise FileNotFoundError(f"{run_dir} is no run folder: it has no config.json")
        config = ExperimentConfig.from_dict(json.loads(record.read_text()))
        if run_dir.parent.resolve() != Path(config.run_root or runs_dir()).resolve():
            config.run_root = str(run_dir.parent)
        if run_dir.name != f"{config.method}-{config.backbone}-{config.preset}-{config.config_hash()}":
            config.name = run_dir.name
        return cls(config, progress=progress)

    def _refuse_changed_config(self) -> None:
        """A run folder holds the model of one config: a named run whose config changed must not
        reuse (or overwrite the record of) the model trained under the old one."""
        record = self.run_dir / "config.json"
        trained = any((self.run_dir / f).is_file() for f in ("model.pt", "checkpoint.pt"))
        if not (record.is_file() and trained):
            return
        old = json.loads(record.read_text())
        new = {**self.config.to_dict(), "config_hash": self.config.config_hash()}
        if old.get("config_hash") == new["config_hash"]:
            return
        changed = sorted(k for k in set(old) | set(new) if k != "config_hash" and old.get(k) != new.get(k))
        raise ValueError(f"run {self.run_dir} holds a model trained with another config (hash "
                         f"{old.get('config_hash')}, this one {new['config_hash']}; differs in {changed}): "
                         "give this config another name, or delete the folder to retrain")

    def _synthvoc_root(self) -> Path:
        from wsss.data import synthvoc

        return synthvoc.generate(synthvoc.default_root(self.config.preset, self.config.data_seed),
                                 preset=self.config.preset, seed=self.config.data_seed, progress=self.progress)

    # ------------------------------------------------------------------ data and model

    @property
    def device(self) -> torch.device:
        return device_named(self.config.train.device)

    def _synthvoc_image_size(self) -> int | None:
        """The image size SynthVOC's meta.json records; None for real data."""
        meta = self.data_root / "meta.json"
        return int(json.loads(meta.read_text())["params"]["image_size"]) if meta.is_file() else None

    def crop_size(self) -> int:
        return self.config.crop_size or self._synthvoc_image_size() or 448

    def scale_policy(self) -> ScalePolicy:
        """How the papers' size-dependent settings convert to this data: SynthVOC's image size (and
        the preset's walk floor, `WALK_CELLS`); the papers' own settings on real data (VOC-sized images)."""
        size = self._synthvoc_image_size()
        return PAPER_SCALE if size is None else ScalePolicy(size, WALK_CELLS.get(self.config.preset, MIN_WALK_CELLS))

    def tta_scales(self) -> tuple[float, ...]:
        """The configured test-time scales that the scale policy keeps for this method's network
        (scale 0.5 is dropped on 96 px images: its maps would be 6 cells wide)."""
        return self.scale_policy().scales(self.config.scales, self.method.backbone.output_stride)

    def dataset(self, split: str, train: bool = False) -> VOCDataset:
        """The split with training augmentation (`train=True`) or plain, with masks when evaluating."""
        key = (split, train)
        if key not in self._datasets:
            needs_saliency = "saliency" in method_class(self.config.method).requires
            transform = (train_transform(self.crop_size(), self.config.scale_range) if train else eval_transform())
            saliency_dir = self.config.saliency_dir
            if needs_saliency and train:  # the method may pick its own source (EPS: a classical detector)
                saliency_dir = self.method.saliency_folder(self) or saliency_dir
            self._datasets[key] = VOCDataset(
                self.data_root, split, transform=transform, with_mask=not train,
                with_saliency=needs_saliency and train, saliency_dir=saliency_dir,
                extra_masks=self.method.training_masks(self, split) if train else None,
                seed=self.config.train.seed, cache=True)
        return self._datasets[key]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset(self.config.eval_split).class_names

    @property
    def method(self) -> WSSSMethod:
        if self._method is None:
            c = self.config
            torch.manual_seed(c.train.seed)
            self._method = build_method(c.method, len(self.class_names), c.backbone, c.pretrained,
                                        scale=self.scale_policy(), **c.method_options)
        return self._method

    # ------------------------------------------------------------------ stages

    def cam_run(self) -> "Experiment":
        """The CAM baseline run a method builds on: method "cam" on the same data, preset, backbone
        and seed with the preset's recipe (the run notebook 01 trains)."""
        return self.related_run("cam")

    def related_run(self, method: str, **options: Any) -> "Experiment":
        """The run of `method` on the same data, preset, backbone and seed, with the preset's recipe;
        `options` are its method options and training overrides (e.g. epochs)."""
        c = self.config
        train_over, method_options = split_train_overrides({"seed": c.train.seed, **options})
        cfg = ExperimentConfig.for_preset(c.preset, method=method, method_options=method_options,
                                          data_root=c.data_root, data_seed=c.data_seed, backbone=c.backbone,
                                          pretrained=c.pretrained, crop_size=c.crop_size, run_root=c.run_root,
                                          **train_over)
        return Experiment(cfg, progress=self.progress)

    def train(self, resume: bool = True) -> TrainResult:
        ds = self.dataset(self.config.train_split, train=True)
        m = self.method
        if (self.run_dir / "checkpoint.pt").is_file() and resume:
            self._refuse_changed_training_inputs()
        else:
            self._write_training_inputs()
        if m.backbone_init == "cam" and not bool(m.initialized):  # a resumed run's checkpoint then replaces it
            m.start_backbone_from(self.cam_run().trained_method())
        cfg = replace(self.config.train, progress=self.progress and self.config.train.progress)
        return train(self.method, ds, cfg, self.run_dir, resume=resume)

    def _training_inputs(self) -> dict[str, str]:
        """Content digests of the method's training masks (SANCE's CAM seeds): its model depends on
        them as much as on its config, and they come from earlier runs and settings chosen on train."""
        folders = self.method.training_masks(self, self.config.train_split)
        return {name: contents_fingerprint(folder) for name, folder in sorted(folders.items())}

    def _write_training_inputs(self) -> None:
        inputs = self._training_inputs()
        if inputs:
            write_json(self.run_dir / TRAINING_INPUTS, inputs)
        self._inputs_checked = True

    def _refuse_changed_training_inputs(self) -> None:
        """A model trained on other training masks than the current ones is stale; it is never
        served, and never deleted: the error says what changed."""
        if self._inputs_checked:
            return
        inputs = self._training_inputs()
        record = self.run_dir / TRAINING_INPUTS
        stored = json.loads(record.read_text()) if record.is_file() else None
        if inputs and stored != inputs:
            raise StaleRunError(
                f"run {portable(self.run_dir)} was trained on other training masks ({stored or 'not recorded'}) "
                f"than the current ones ({inputs}), e.g. made with another seed threshold; delete the folder "
                "to retrain")
        self._inputs_checked = True

    def trained_method(self) -> WSSSMethod:
        """The trained model, in eval mode on the experiment's device (trains first if needed)."""
        if not (self.run_dir / "model.pt").is_file():
            self.train()
        self._refuse_changed_training_inputs()
        m = to_device(load_model(self.method, self.run_dir), self.device)
        return m.eval()

    def inference_method(self) -> WSSSMethod:
        """`trained_method` for passes over whole splits: a copy with the backbones' batch norms
        folded into their convolutions (the same maps to float rounding, faster; `wsss.models.fusion`)."""
        return folded_for_inference(self.trained_method())

    def data_key(self, split: str) -> dict[str, str]:
        """What a split's cached outputs depend on in the data: its exact ids and the files behind
        them (images, masks, context masks, image labels, SynthVOC's meta.json)."""
        if split not in self._data_keys:
            self._data_keys[split] = dataset_key(self.dataset(split))
        return self._data_keys[split]

    def stage_key(self, stage: str, split: str, model_dir: Path | None = None, **settings: Any) -> dict[str, Any]:
        """The cache key of a stage that runs a trained model (this run's, or the one in `model_dir`,
        trained by the caller) over `split`: the data, the model file, the code and `settings`."""
        model_dir = model_dir or self.run_dir
        if model_dir == self.run_dir and not (self.run_dir / "model.pt").is_file():
            self.train()
        if model_dir == self.run_dir:
            self._refuse_changed_training_inputs()
        return {"stage": stage, "split": split, "data": self.data_key(split),
                "model": files_fingerprint([model_dir / "model.pt"]), "code": code_fingerprint(),
                "max_pixels": max_scaled_pixels(),  # a huge image's maps depend on the budget per pass
                **json.loads(json.dumps(settings, default=str))}

    def class_maps_key(self, split: str) -> dict[str, Any]:
        return self.stage_key("class_maps", split, scales=list(self.tta_scales()), flip=self.config.flip)

    def class_maps(self, split: str | None = None) -> Path:
        split = split or self.config.eval_split
        return cached_folder(self.run_dir / "cams" / split, self.class_maps_key(split),
                             lambda out: self.method.write_class_maps(self, split, out), f"class maps of {split}")

    def sweep(self, split: str | None = None) -> dict[str, Any]:
        split = split or self.config.eval_split
        key = {"stage": "sweep", "class_maps": digest(self.class_maps_key(split)),
               "thresholds": list(self.config.thresholds)}
        return cached_json(self.run_dir / f"sweep_{split}.json", key, lambda: sweep_cam_thresholds(
            self.class_maps(split), self.dataset(split), self.config.thresholds, progress=self.progress))["result"]

    def best_threshold(self, split: str | None = None) -> float:
        """The background threshold with the best mIoU on `split` (default: the train split, where
        every setting that needs ground truth is chosen; on the reported split it is an oracle)."""
        return self.sweep(split or self.config.train_split)["best_threshold"]

    def crf_climb(self, split: str | None = None) -> dict[str, Any]:
        """`climb_crf_threshold` on `split`: on train (the default) from `best_threshold()`, which
        chooses the CRF rows' threshold; on any other split from that choice, which gives their
        oracle (the best a climb on the reported split reaches; never used)."""
        split = split or self.config.train_split
        start = self.best_threshold() if split == self.config.train_split else self.crf_threshold()
        key = {"stage": "crf_threshold", "class_maps": digest(self.class_maps_key(split)), "start": start,
               "thresholds": list(self.config.thresholds), "crf": asdict(self.config.crf)}
        return cached_json(self.run_dir / f"crf_threshold_{split}.json", key, lambda: climb_crf_threshold(
            self.class_maps(split), self.dataset(split), start, self.config.crf, self.config.thresholds,
            progress=self.progress))["result"]

    def crf_threshold(self) -> float:
        """The background threshold of the maps that go through CRF, chosen on the train split *with*
        CRF (CRF sharpens the maps, so it sits below `best_threshold()`)."""
        return self.crf_climb()["best_threshold"]

    def default_threshold(self, crf: bool) -> float:
        """The train-chosen background threshold for maps without or with CRF."""
        return self.crf_threshold() if crf else self.best_threshold()

    def evaluate(self, split: str | None = None, bg_threshold: float | None = None, crf: bool = False) -> dict[str, Any]:
        """Scores of the thresholded class maps, at the threshold chosen on the train split by default
        (with CRF, the one chosen with CRF). On another split the scores also carry `oracle_miou` /
        `oracle_threshold`: the best of `split`'s own sweep (with CRF, of its climb), a number no
        method could report honestly, shown only beside the real one."""
        split = split or self.config.eval_split
        thr = self.default_threshold(crf) if bg_threshold is None else bg_threshold
        crf_params = self.config.crf if crf else None
        key = {"stage": "evaluate", "class_maps": digest(self.class_maps_key(split)), "bg_threshold": thr,
               "crf": asdict(crf_params) if crf_params else None}
        record = cached_json(self.run_dir / f"eval_{split}_thr{thr:.2f}{'_crf' if crf else ''}.json", key,
                             lambda: evaluate_cams(self.class_maps(split), self.dataset(split), thr, crf_params,
                                                   progress=self.progress))
        oracle = {}
        if split != self.config.train_split:
            sweep = self.crf_climb(split) if crf else self.sweep(split)
            best = sweep["thresholds"].index(sweep["best_threshold"])
            oracle = {"oracle_miou": sweep["miou"][best], "oracle_threshold": sweep["best_threshold"]}
        return {**record["result"], **self.provenance(split, thr, crf), "code_version": record["code_version"],
                **oracle}

    def pseudo_masks(self, split: str | None = None, bg_threshold: float | None = None, crf: bool = False) -> Path:
        split = split or self.config.train_split
        thr = self.default_threshold(crf) if bg_threshold is None else bg_threshold
        crf_params = self.config.crf if crf else None
        key = {"stage": "pseudo_masks", "class_maps": digest(self.class_maps_key(split)), "bg_threshold": thr,
               "crf": asdict(crf_params) if crf_params else None}
        return cached_folder(self.run_dir / "pseudo_masks" / f"{split}_thr{thr:.2f}{'_crf' if crf else ''}", key,
                             lambda out: write_pseudo_masks(self.class_maps(split), self.dataset(split), out, thr,
                                                            crf_params, progress=self.progress),
                             f"pseudo masks of {split}")

    def final_pseudo_masks(self, split: str | None = None) -> Path:
        """The method's own pseudo masks (its `pseudo_labels` hook), else thresholded class maps."""
        split = split or self.config.train_split
        return self.method.pseudo_labels(self, split) or self.pseudo_masks(split)

    def evaluate_masks(self, pred_dir: str | os.PathLike, split: str | None = None) -> dict[str, Any]:
        return evaluate_label_dir(pred_dir, self.dataset(split or self.config.eval_split), progress=self.progress)

    # ------------------------------------------------------------------ bookkeeping

    def is_real_voc(self) -> bool:
        """Real data (no SynthVOC meta.json): VOC-scale recipes apply (IRNet's, DeepLab's)."""
        return not (self.data_root / "meta.json").is_file()

    def phenomena(self) -> dict[str, Any]:
        """SynthVOC's planted phenomena (part-defined classes, context) from meta.json; {} for real data."""
        meta = self.data_root / "meta.json"
        return json.loads(meta.read_text()).get("phenomena", {}) if meta.is_file() else {}

    def provenance(self, split: str, bg_threshold: float | None, crf: bool) -> dict[str, Any]:
        c = self.config
        return {"method": c.method, "backbone": c.backbone, "preset": c.preset, "split": split,
                "bg_threshold": bg_threshold, "crf": crf, "scales": list(self.tta_scales()), "flip": c.flip,
                "seed": c.train.seed, "data": portable(self.data_root), "config_hash": c.config_hash(),
                "config_file": portable(self.run_dir / "config.json"), "code_version": code_version()}

    def train_log(self) -> list[dict[str, float]]:
        from wsss.train import LOG, read_log

        return read_log(self.run_dir / LOG)
