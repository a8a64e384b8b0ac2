"""A trained run on SynthVOC's probe splits, and where its class maps put their mass.

The probe splits (`wsss.data.synthvoc.PROBES`) break one planted correlation each, as the
controlled benchmarks do (Waterbirds' conflict groups, ImageNet-9's swapped backgrounds,
FunnyBirds' part interventions):

- `object_alone`: trains and boats without rail or water; does the object's map survive without
  its context?
- `swapped`: a train on water, a boat on rails; the context FP here is the share of the foreign
  context labelled as the object standing on it.
- `context_alone`: rail or water with neither train nor boat; other classes only. With image
  labels given, no pixel can be labelled train or boat here, so this split tests the other
  classes beside a context, not the classifier's false alarms.
- `part_kept`, `part_removed`, `part_moved`: the same scenes of horned and tailed creatures
  (same label), intact, without their horn or tail, and with it mirrored to the far side of the
  body (FunnyBirds' part interventions). Paired image by image, they tell how often the network's
  image-level prediction of the class flips without the part or with it elsewhere
  (`label_flips`), and whether the map follows the part or stays on the body.

Every probe is scored like val: class maps at the run's scales and flips, thresholded at the
background threshold chosen on the train split. The worst-group mIoU is the lowest mIoU over val
and the probes. Two map-level measures complete it, on val: the relevance-mass accuracy of
CLEVR-XAI (the share of a class map's mass inside the class's ground-truth pixels, averaged over
(image, present class) pairs whose map has mass to place, `MIN_MAP_MASS`), split for part-defined
classes into part, body and elsewhere (also on the three part probes); and mIoU by object size,
each (image, class) pair in the bucket of its ground-truth area.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wsss.cache import cached_folder, code_fingerprint, files_fingerprint
from wsss.cli import add_progress_flag
from wsss.data import synthvoc
from wsss.data.transforms import eval_transform
from wsss.data.voc import VOCDataset
from wsss.evaluation import DEFAULT_THRESHOLDS, evaluate_cams
from wsss.experiment import Experiment, dataset_key
from wsss.inference import infer_class_maps, load_cam, max_scaled_pixels, size_grouped_batches
from wsss.io import IGNORE_INDEX, merge_csv_rows, read_csv_rows
from wsss.methods.base import class_map_settings
from wsss.paths import reports_dir
from wsss.report import make_row
from wsss.stages.pseudo_masks import cam_to_label

# Object area as a share of the image: small below the first edge, large from the second on.
# Quick's objects span 25-70% of the side, so about 4-40% of the area.
SIZE_EDGES: tuple[float, float] = (0.06, 0.15)
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
# The part interventions, each paired with `part_kept` image by image.
PART_INTERVENTIONS: dict[str, str] = {"removed": "part_removed", "moved": "part_moved"}
# A class map with less mass than one pixel at the sweep's lowest background threshold labels no
# pixel at any threshold: it has no location to split. Below this, "mass > 0" is float noise (a
# single float16 step of 2e-7 made a near-empty map count as "all elsewhere" on one CPU and not
# on another).
MIN_MAP_MASS: float = min(DEFAULT_THRESHOLDS)


def probes_root(run: Experiment) -> Path:
    """The probe splits of the run's SynthVOC dataset (same generator settings), written beside it
    on first use, and written again where an older generator's probes lie there (they follow from
    the dataset alone)."""
    if run.is_real_voc():
        raise ValueError(f"{run.run_dir.name} trained on real data ({run.data_root}): probe splits exist for "
                         "SynthVOC only")
    meta = json.loads((run.data_root / "meta.json").read_text())
    return synthvoc.generate_probes(run.data_root.parent / f"{run.data_root.name}-probes", meta["preset"], meta["seed"],
                                    progress=run.progress, overwrite=True, **meta["params"])


def probe_dataset(run: Experiment, probe: str) -> VOCDataset:
    if probe not in synthvoc.PROBES:
        raise ValueError(f"no probe {probe!r}; probes: {', '.join(synthvoc.PROBES)}")
    return VOCDataset(probes_root(run), probe, transform=eval_transform(), with_mask=True, cache=True)


def probe_class_maps(run: Experiment, probe: str) -> Path:
    """The run's class maps of a probe split (cached beside its own, keyed like them)."""
    if not (run.run_dir / "model.pt").is_file():
        run.train()  # before the key, which holds the model file's fingerprint
    ds = probe_dataset(run, probe)
    key = {"stage": "probe_class_maps", "split": probe, "data": dataset_key(ds),
           "model": files_fingerprint([run.run_dir / "model.pt"]), "code": code_fingerprint(),
           "max_pixels": max_scaled_pixels(), "scales": list(run.tta_scales()), "flip": run.config.flip}
    return cached_folder(run.run_dir / "probes" / probe, key, lambda out: infer_class_maps(
        run.inference_method().class_maps, ds, out, **class_map_settings(run)), f"class maps of probe {probe}")


def probe_mask(run: Experiment, probe: str, sample: dict[str, Any]) -> np.ndarray:
    """The run's label map of one probe image (a `probe_dataset` sample), as `probe_scores` scores it."""
    keys, cam = load_cam(probe_class_maps(run, probe) / f"{sample['id']}.npz")
    return cam_to_label(keys, cam, run.best_threshold())


def probe_scores(run: Experiment, probes: Sequence[str] = tuple(synthvoc.PROBES)) -> dict[str, dict[str, Any]]:
    """{probe: scores} at the background threshold chosen on the train split, val included."""
    thr = run.best_threshold()
    out = {"val": run.evaluate(bg_threshold=thr)}
    for probe in probes:
        out[probe] = evaluate_cams(probe_class_maps(run, probe), probe_dataset(run, probe), thr, progress=run.progress)
    return out


def image_probabilities(run: Experiment, probe: str, model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """((N, K) the network's image-level probabilities, (N, K) the image labels) of a probe split,
    at one scale without flips (what the classifier itself says about each image); `model`: the
    run's trained method when already loaded."""
    model = model or run.trained_method()
    probs, labels = [], []
    with torch.no_grad():
        for group in size_grouped_batches(probe_dataset(run, probe)):
            images = torch.stack([s["image"] for s in group]).to(run.device)
            probs.append(model.image_probabilities(images).cpu().numpy())
            labels.append(torch.stack([s["label"] for s in group]).numpy())
    return np.concatenate(probs), np.concatenate(labels)


def label_flips(run: Experiment, part_classes: Sequence[str] = synthvoc.PART_DEFINED) -> dict[str, float]:
    """How the image-level prediction of the part-defined classes reacts to the part interventions,
    pair by pair: `part_recognized_kept` (share of part-defined objects predicted present, p > 0.5,
    in the intact scenes), and per intervention the share of those recognized ones no longer
    predicted (`label_flips_removed`, ...) and the mean drop of their probability (`prob_drop_...`)."""
    cols = [run.class_names.index(c) for c in part_classes if c in run.class_names]
    model = run.trained_method()  # loaded once for the three paired probes
    before, present = (a[:, cols] for a in image_probabilities(run, "part_kept", model))
    present = present > 0.5
    recognized = present & (before > 0.5)
    out = {"part_recognized_kept": float(recognized.sum() / max(present.sum(), 1))}
    for name, probe in PART_INTERVENTIONS.items():
        after, labels = (a[:, cols] for a in image_probabilities(run, probe, model))
        if not np.array_equal(labels > 0.5, present):
            raise RuntimeError(f"{probe} is not paired with part_kept: its image labels differ")
        if not recognized.any():  # e.g. a network that never predicts these classes
            out[f"label_flips_{name}"] = out[f"prob_drop_{name}"] = float("nan")
            continue
        out[f"label_flips_{name}"] = float((recognized & (after <= 0.5)).sum() / recognized.sum())
        out[f"prob_drop_{name}"] = float((before - after)[recognized].mean())
    return out


def part_intervention_row(run: Experiment) -> dict[str, Any]:
    """One row of the part-intervention table: label flips (`label_flips`) and, on each of the
    three part probes, where the part-defined classes' map mass lies (part, body, elsewhere)."""
    part_names = list(run.phenomena().get("part_defined", []))
    row: dict[str, Any] = {"method": run.config.method, "seed": run.config.train.seed, "run": run.run_dir.name}
    row.update(label_flips(run, part_names))
    thr = run.best_threshold()
    for name, probe in {"kept": "part_kept", **PART_INTERVENTIONS}.items():
        mass = mass_and_size_scores(probe_class_maps(run, probe), probe_dataset(run, probe), thr, part_names)
        row.update({f"{where}_mass_{name}": mass[f"{where}_mass"] for where in ("part", "body", "elsewhere")})
    return row


def mass_and_size_scores(cam_dir: Path, dataset: VOCDataset, bg_threshold: float,
                         part_classes: Sequence[str] = synthvoc.PART_DEFINED) -> dict[str, float]:
    """Relevance-mass accuracy (`relevance_mass`), its part / body / elsewhere split over the
    part-defined classes (`part_mass`, `body_mass`, `elsewhere_mass`), and the IoU of each object-size
    bucket (`iou_small`, ...), pooled over the (image, class) pairs in it. Part masks come from
    rendering each SynthVOC image again."""
    part_ids = {dataset.class_names.index(c) for c in part_classes if c in dataset.class_names}
    inside, part_shares = [], []
    inter = np.zeros(len(SIZE_BUCKETS))
    union = np.zeros(len(SIZE_BUCKETS))
    for i in range(len(dataset)):
        sample = dataset.load(i)
        keys, cam = load_cam(cam_dir / f"{sample['id']}.npz")
        gt = sample["mask"]
        valid = gt != IGNORE_INDEX
        pred = cam_to_label(keys, cam, bg_threshold)
        parts = synthvoc.render_by_id(dataset.layout.root, sample["id"]).parts if part_ids & set(keys) else None
        for k, c in enumerate(keys):
            obj = gt == c + 1
            if not obj.any():
                continue
            mass = cam[k] * valid
            total = float(mass.sum())
            if total >= MIN_MAP_MASS:
                inside.append(float(mass[obj].sum()) / total)
                if parts is not None and c in part_ids:
                    on_part = float(mass[obj & parts].sum()) / total
                    part_shares.append((on_part, inside[-1] - on_part))
            bucket = int(np.searchsorted(SIZE_EDGES, obj.sum() / valid.sum(), side="right"))
            hit = pred == c + 1
            inter[bucket] += np.count_nonzero(hit & obj)
            union[bucket] += np.count_nonzero((hit | obj) & valid)
    part, body = np.mean(part_shares, axis=0) if part_shares else (np.nan, np.nan)
    scores = {"relevance_mass": float(np.mean(inside)) if inside else float("nan"),
              "part_mass": float(part), "body_mass": float(body),
              "elsewhere_mass": float(1 - part - body) if part_shares else float("nan")}
    with np.errstate(invalid="ignore", divide="ignore"):
        scores.update({f"iou_{name}": float(x) for name, x in zip(SIZE_BUCKETS, inter / union)})
    return scores


def benchmark_row(run: Experiment, probes: Sequence[str] = tuple(synthvoc.PROBES)) -> dict[str, Any]:
    """One report row: mIoU on val and each probe, the worst group, the context FP on val and on
    swapped contexts, part-defined recall on val and without the part, and the map-level measures."""
    scores = probe_scores(run, probes)
    phenomena = run.phenomena()
    part_names = list(phenomena.get("part_defined", []))
    context_names = list(phenomena.get("context", {}))

    def recall_of(s: dict[str, Any], column: str) -> float | None:
        return make_row(s, part_classes=part_names, context_classes=context_names).get(column)

    row: dict[str, Any] = {"method": run.config.method, "seed": run.config.train.seed, "run": run.run_dir.name}
    row.update({f"miou_{name}": s["miou"] for name, s in scores.items()})
    row["worst_group_miou"] = min(s["miou"] for s in scores.values())
    row["worst_group"] = min(scores, key=lambda n: scores[n]["miou"])
    row["context_fp_val"] = scores["val"].get("context_fp_rate", float("nan"))
    if "swapped" in scores:
        row["context_fp_swapped"] = scores["swapped"].get("context_fp_rate", float("nan"))
    row["context_recall_val"] = recall_of(scores["val"], "context_recall")
    if "object_alone" in scores:  # the context's objects, found without their context?
        row["context_recall_alone"] = recall_of(scores["object_alone"], "context_recall")
    if "part_removed" in scores:
        row["part_recall_val"] = recall_of(scores["val"], "part_recall")
        row["part_recall_removed"] = recall_of(scores["part_removed"], "part_recall")
    if "part_moved" in scores:
        row["part_recall_moved"] = recall_of(scores["part_moved"], "part_recall")
    row.update(mass_and_size_scores(run.class_maps(), run.dataset(run.config.eval_split), run.best_threshold(),
                                    part_names))
    return row


# ----------------------------------------------------------------------------------------------
# Part interventions over seeds (`wsss part-interventions`)

# The part-intervention columns compared with the CAM, seed by seed.
PART_COLUMNS: tuple[str, ...] = (
    "part_recognized_kept", "label_flips_removed", "label_flips_moved", "prob_drop_removed", "prob_drop_moved",
    *(f"{where}_mass_{name}" for name in ("kept", "removed", "moved") for where in ("part", "body", "elsewhere")))


def part_intervention_study(preset: str, seeds: int, methods: Sequence[str] | None = None, baseline: str = "cam",
                            log: Any = print, **settings: Any) -> list[dict[str, Any]]:
    """`part_intervention_row` of the baseline's and each method's main run at seeds 0..N-1 (runs
    trained where missing), each added to reports/part_interventions.csv as it is measured."""
    from wsss import compare

    names, missing = compare.split_registered(methods)
    if missing:
        raise ValueError(f"no method {', '.join(missing)}")
    names = [baseline, *(m for m in names if m != baseline and compare.has_class_maps(m))]
    key = lambda r: (r["preset"], r["method"], int(r["seed"]))  # noqa: E731
    rows = []
    for seed in range(seeds):
        for method in names:
            t = time.perf_counter()
            row = {**part_intervention_row(compare.main_experiment(preset, method, seed=seed, **settings)),
                   "preset": preset}
            rows.append(row)
            merge_csv_rows(reports_dir() / "part_interventions.csv", [row], key=key, order=key, numeric=PART_COLUMNS)
            log(f"[part-interventions] {method} seed {seed}: flips removed {row['label_flips_removed']:.3f}, "
                f"moved {row['label_flips_moved']:.3f} ({time.perf_counter() - t:.0f} s)")
    return rows


def read_part_interventions(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows `part_intervention_study` stored (reports/part_interventions.csv); [] when none."""
    return read_csv_rows((Path(folder) if folder else reports_dir()) / "part_interventions.csv", PART_COLUMNS)


def part_intervention_summary(rows: Sequence[dict[str, Any]], baseline: str = "cam",
                              columns: Sequence[str] = PART_COLUMNS) -> list[dict[str, Any]]:
    """Per method: the mean of each column over seeds and, beside the baseline, the paired
    difference method - baseline with its 95% t-interval (`<column>_diff`, `_low`, `_high`), over
    the seeds both have (NaN values, e.g. no flip rate where nothing was recognized, leave a seed out)."""
    from wsss.claims import paired_interval

    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[int(r["seed"])] = r
    if baseline not in by_method:
        raise ValueError(f"no {baseline} rows to compare with")
    base = by_method[baseline]
    out = []
    for method, seeds in by_method.items():
        summary: dict[str, Any] = {"method": method, "seeds": len(seeds)}
        for c in columns:
            values = [float(r[c]) for r in seeds.values() if not math.isnan(float(r[c]))]
            summary[c] = sum(values) / len(values) if values else math.nan
            if method == baseline:
                continue
            diffs = [float(r[c]) - float(base[s][c]) for s, r in seeds.items() if s in base]
            diffs = [d for d in diffs if not math.isnan(d)]
            mean, low, high = paired_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
            summary.update({f"{c}_diff": mean, f"{c}_low": low, f"{c}_high": high})
        out.append(summary)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("part-interventions", help="label flips and map mass when the part is removed or "
                                                          "moved, every method vs the CAM over seeds")
    p.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every main method with class maps")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_part_interventions)


def _cmd_part_interventions(args: argparse.Namespace) -> int:
    from wsss import viz

    if args.seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {args.seeds}")
    rows = part_intervention_study(args.preset, args.seeds, args.methods, progress=args.progress)
    summary = part_intervention_summary(rows)
    print(viz.markdown_table(summary, ["method", "seeds", "part_recognized_kept", "label_flips_removed",
                                       "label_flips_moved", "part_mass_kept", "body_mass_kept", "part_mass_moved",
                                       "body_mass_moved"], percent=PART_COLUMNS))
    for c in ("label_flips_removed", "label_flips_moved", "part_mass_kept", "part_mass_moved"):
        print(f"\n{c}, method - cam (95% CI over seeds):")
        for s in summary[1:]:
            print(f"  {s['method']}: {100 * s[f'{c}_diff']:+.2f} [{100 * s[f'{c}_low']:+.2f}, {100 * s[f'{c}_high']:+.2f}]")
    print(f"wrote {reports_dir() / 'part_interventions.csv'}")
    return 0
