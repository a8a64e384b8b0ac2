"""Each paper's claim measured as a paired difference over seeds (`wsss study`).

A claim names a metric, the method's run and the baseline's, and the direction the paper says
the method moves the metric. For every seed both runs are trained (or found: runs are cached by
config, so a rerun only adds what is missing) with the same preset and schedule; the seed changes
the new layers' initialisation, the data order and the augmentation, not the pretrained start.
The per-seed differences (method - baseline) give a mean and a two-sided 95% t-interval; the
verdict is *reproduced* when the interval lies on the claimed side of 0, *contradicted* when it
lies on the other, *inconclusive* otherwise (always with one seed).

Scores are those the notebooks report: class maps on val at the background threshold chosen on
the train split, final pseudo masks on train or val, contour scores with flips at scale 1 and at
the scales SANCE's final walk reads them, and the train split's thresholded class maps by object
size (IoU of small, medium and large objects, as notebook 08 scores val).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from wsss.cache import code_version
from wsss.cli import add_progress_flag
from wsss.io import exclusive, merge_csv_rows, read_csv_rows, write_text
from wsss.paths import reports_dir
from wsss.study_tables import refresh_table_cells, table_folder


@dataclass(frozen=True)
class Arm:
    """One side of a claim: a method with options, scored at `stage`."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    stage: str = "cam"  # cam | masks_val | pseudo_train | sizes_train | contours | contours_walk

    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.method}({opts})" if opts else self.method


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    text: str
    metric: str
    higher_is_better: bool
    method: Arm
    baseline: Arm
    paper_evidence: str  # what the paper prints for it on VOC


def _pseudo_beats_cam(method: str, paper: str, evidence: str) -> Claim:
    return Claim(f"{method}_pseudo", paper, "its pseudo masks beat the CAM's", "miou", True,
                 Arm(method, stage="pseudo_train"), Arm("cam", stage="pseudo_train"), evidence)


CLAIMS: tuple[Claim, ...] = (
    Claim("eps_context", "EPS", "saliency removes co-occurring context", "context_fp_rate", False,
          Arm("eps"), Arm("cam"), "Table 4: pseudo masks 69.4 vs CAM 48.0 mIoU (train)"),
    Claim("vwl_parts", "VWL", "visual words raise recall of part-defined classes", "part_recall", True,
          Arm("vwl"), Arm("cam"), "Table 1: CAM 52.9 vs 48.3 mIoU (train)"),
    Claim("sance_contours", "SANCE", "fewer contours inside objects", "share_inside", False,
          Arm("sance", stage="contours"), Arm("irn_contour", stage="contours"),
          "Table 1: pseudo labels 76.9 vs IRNet 66.6 mIoU (train)"),
    # The same at the scales the final walk reads the contours (1.5x and 2x on 96 px images): at
    # scale 1 a contour cell covers 4 px, so the share inside also counts the blur of true contours.
    Claim("sance_contours_walk", "SANCE", "fewer contours inside objects, at the walk's scales", "share_inside",
          False, Arm("sance", stage="contours_walk"), Arm("irn_contour", stage="contours_walk"),
          "Table 1: pseudo labels 76.9 vs IRNet 66.6 mIoU (train)"),
    Claim("rcm_precision", "RCM + MAM", "RCM raises precision", "fg_precision", True,
          Arm("rcm_mam", {"mam": False}), Arm("cam"), "Table 2: RCM raises precision over the baseline"),
    Claim("mam_recall", "RCM + MAM", "MAM raises recall", "fg_recall", True,
          Arm("rcm_mam", {"rcm": False}), Arm("cam"), "Table 2: MAM raises recall over the baseline"),
    Claim("mam_parts", "RCM + MAM", "MAM raises recall of part-defined classes", "part_recall", True,
          Arm("rcm_mam", {"rcm": False}), Arm("cam"), "Table 2: MAM raises recall over the baseline"),
    Claim("shape_cues_boundary", "shape cues", "SCM and SPR raise boundary quality", "boundary_iou", True,
          Arm("shape_cues", stage="masks_val"), Arm("shape_cues", {"scm": False, "spr": False}, stage="masks_val"),
          "Table 5: 68.9 vs 42.7 mIoU (#4 vs baseline)"),
    _pseudo_beats_cam("eps", "EPS", "Table 4: 69.4 vs 48.0 mIoU"),
    # Map selection (tau) is how EPS copes with a saliency detector that misses small objects: the
    # objects the saliency misses are the small ones, so their IoU is where a bias would show.
    Claim("eps_small", "EPS", "its pseudo masks keep the small objects saliency misses", "iou_small", True,
          Arm("eps", stage="sizes_train"), Arm("cam", stage="sizes_train"),
          "Table 3: adaptive map selection beats the naive one (saliency bias)"),
    _pseudo_beats_cam("vwl", "VWL", "Table 2: + IRNet 67.7 vs 66.5"),
    _pseudo_beats_cam("sance", "SANCE", "Table 1: 76.9 vs IRNet's 66.6"),
    _pseudo_beats_cam("rcm_mam", "RCM + MAM", "Sec. 4.4: 71.0 with the random walk"),
    _pseudo_beats_cam("shape_cues", "shape cues", "Table 5: 68.9 (train)"),
)


def paired_interval(diffs: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the two-sided t-interval of the mean of `diffs`; (mean, -inf, inf)
    with fewer than two values."""
    from scipy import stats

    n = len(diffs)
    if n == 0:
        raise ValueError("no differences to summarize")
    mean = sum(diffs) / n
    if n < 2:
        return mean, -math.inf, math.inf
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    if (low > 0 and higher_is_better) or (high < 0 and not higher_is_better):
        return "reproduced"
    if (high < 0 and higher_is_better) or (low > 0 and not higher_is_better):
        return "contradicted"
    return "inconclusive"


def _score(run: Any, stage: str) -> dict[str, Any]:
    """The run's scores at `stage`, with the phenomenon columns (part-defined and context recall)
    that the notebooks' rows carry."""
    from wsss.report import make_row

    if stage in ("contours", "contours_walk"):
        from wsss.analysis.contours import contour_scores
        from wsss.stages.propagation import PseudoLabelParams

        walk = PseudoLabelParams.for_run(run, "seg").contour_scales if stage == "contours_walk" else None
        return contour_scores(run, scales=walk or (1.0,))
    if stage == "sizes_train":  # the thresholded class maps of train (the shared pseudo masks) by object size
        from wsss.analysis.probes import mass_and_size_scores

        split = run.config.train_split
        return mass_and_size_scores(run.class_maps(split), run.dataset(split), run.best_threshold(),
                                    run.phenomena().get("part_defined", []))
    if stage == "cam":
        scores = run.evaluate()
    elif stage in ("masks_val", "pseudo_train"):
        split = run.config.eval_split if stage == "masks_val" else run.config.train_split
        scores = run.evaluate_masks(run.final_pseudo_masks(split), split)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    phenomena = run.phenomena()
    return {**scores, **make_row(scores, part_classes=phenomena.get("part_defined", []),
                                 context_classes=list(phenomena.get("context", {})))}


def _seed_values(claim: Claim, preset: str, seed: int, progress: bool, log: Callable[[str], None],
                 settings: dict[str, Any]) -> tuple[float, float, str]:
    """(method value, baseline value, precision) of `claim` at `seed`; the baseline trains on the
    method run's schedule."""
    from wsss.experiment import experiment_factory

    make = experiment_factory(preset, progress=progress, seed=seed, **settings)
    t = time.perf_counter()
    run = make(claim.method.method, **claim.method.options)
    base = make(claim.baseline.method, epochs=run.config.train.epochs, **claim.baseline.options)
    method_val = float(_score(run, claim.method.stage)[claim.metric])
    base_val = float(_score(base, claim.baseline.stage)[claim.metric])
    where = f" ({settings['data_root']})" if settings.get("data_root") else ""
    log(f"[study] {claim.key}{where} seed {seed}: {claim.metric} {method_val:.4f} vs {base_val:.4f} "
        f"({time.perf_counter() - t:.0f} s)")
    return method_val, base_val, "bf16" if run.config.train.amp else "fp32"


def _seed_values_in_worker(key: str, preset: str, seed: int, progress: bool,
                           settings: dict[str, Any]) -> tuple[float, float, str]:
    claim = next(c for c in CLAIMS if c.key == key)
    return _seed_values(claim, preset, seed, progress, lambda line: print(line, flush=True), settings)


def _claim_row(claim: Claim, preset: str, values: Sequence[tuple[float, float, str]]) -> dict[str, Any]:
    method_vals, base_vals = [v[0] for v in values], [v[1] for v in values]
    mean, low, high = paired_interval([m - b for m, b in zip(method_vals, base_vals)])
    return {"claim": claim.key, "paper": claim.paper, "text": claim.text, "metric": claim.metric,
            "better": "higher" if claim.higher_is_better else "lower", "method": claim.method.label(),
            "baseline": claim.baseline.label(), "paper_evidence": claim.paper_evidence, "seeds": len(values),
            "method_mean": sum(method_vals) / len(method_vals), "baseline_mean": sum(base_vals) / len(base_vals),
            "diff_mean": mean, "ci_low": low, "ci_high": high,
            "verdict": verdict(low, high, claim.higher_is_better), "preset": preset, "precision": values[0][2],
            # Per seed, so a later study (another commit, another machine) can be paired seed by seed.
            "method_values": " ".join(f"{v:.6f}" for v in method_vals),
            "baseline_values": " ".join(f"{v:.6f}" for v in base_vals),
            **provenance()}


def provenance() -> dict[str, str]:
    """When and by which code a row was measured (`wsss.io.PROVENANCE`): a table row outlives the
    checkout that wrote it."""
    return {"measured": time.strftime("%Y-%m-%d", time.gmtime()), "code_version": code_version()}


def measure_claim(claim: Claim, preset: str, seeds: Sequence[int], progress: bool = False,
                  log: Callable[[str], None] = print, **settings: Any) -> dict[str, Any]:
    """The claim's row: per-seed values of both arms, the paired mean and 95% interval, the verdict.
    `settings` go to every run (e.g. run_root, data_root, max_steps); the baseline trains on the
    method run's schedule."""
    return _claim_row(claim, preset, [_seed_values(claim, preset, s, progress, log, settings) for s in seeds])


def measure_claims(tasks: Sequence[tuple[Claim, dict[str, Any]]], preset: str, seeds: Sequence[int], jobs: int = 1,
                   progress: bool = False, log: Callable[[str], None] = print) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, row) of each task (a claim and the settings of its runs) as soon as all its seeds are
    measured. With `jobs` > 1 the (task, seed) pairs run in that many processes side by side
    (`wsss.parallel`), in task order; the rows equal those of one process, since a run depends on
    its config only. A failing pair stops the others that have not started and raises."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds to measure")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:
        for i, (claim, settings) in enumerate(tasks):
            yield i, measure_claim(claim, preset, seeds, progress=progress, log=log, **settings)
        return
    from wsss.parallel import completed_in_processes, threads_per_job

    pairs = [(i, s) for i in range(len(tasks)) for s in seeds]
    jobs = min(jobs, len(pairs))
    log(f"[study] {len(pairs)} runs of (claim, seed) pairs in {jobs} processes, "
        f"{threads_per_job(jobs)} thread(s) each")
    values: dict[int, dict[int, tuple[float, float, str]]] = {i: {} for i in range(len(tasks))}
    calls = [(tasks[i][0].key, preset, s, progress, tasks[i][1]) for i, s in pairs]
    for k, result in completed_in_processes(_seed_values_in_worker, calls, jobs):
        i, s = pairs[k]
        values[i][s] = result
        if len(values[i]) == len(seeds):
            yield i, _claim_row(tasks[i][0], preset, [values[i][s] for s in seeds])


def claims_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| paper | claim | metric | paper's VOC evidence | method | baseline | difference (95% CI), points | "
             "seeds | precision | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = ("n/a" if math.isinf(r["ci_low"]) else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]")
        lines.append(f"| {r['paper']} | {r['text']} | {r['metric']} ({r['better']} is better) | "
                     f"{r['paper_evidence']} | {100 * r['method_mean']:.1f} | {100 * r['baseline_mean']:.1f} | "
                     f"{100 * r['diff_mean']:+.2f} {ci} | {int(r['seeds'])} | {r.get('precision') or 'not recorded'} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def write_claims(rows: Sequence[dict[str, Any]], folder: str | Path | None = None) -> Path:
    """reports/claims.csv (every column) and reports/claims.md; returns the Markdown file.

    Rows of claims that `rows` does not measure are kept, so a study of a subset adds to the table
    instead of replacing it; the table follows the order of CLAIMS. A replaced row with other
    numbers goes to reports/claims_history.csv. The executed comparison notebooks in the folder
    (and its demo/ and runs/) show the new table too (`refresh_comparison_notebooks`)."""
    folder = Path(folder) if folder else reports_dir()
    order = {c.key: i for i, c in enumerate(CLAIMS)}
    table = merge_csv_rows(folder / "claims.csv", rows, key=lambda r: r["claim"],
                           order=lambda r: order.get(r["claim"], len(order)), numeric=_NUMERIC)
    write_text(folder / "claims.md", claims_markdown(table))
    refresh_comparison_notebooks(folder)
    return folder / "claims.md"


# The comparison notebook's cell that shows the study (notebooks/src/07_compare.py): its output
# depends on reports/claims.csv alone.
_CLAIMS_CELL = "claims.read_claims()"


def refresh_comparison_notebooks(folder: str | Path | None = None) -> list[Path]:
    """Re-render the claims cell of every executed comparison notebook (07_compare*.ipynb in
    `folder`, its demo/ and runs/) from the current table (`wsss.study_tables.refresh_table_cells`;
    the cell's metadata records the date under `wsss.claims_refreshed`). Returns the notebooks
    rewritten."""
    folder = Path(folder) if folder else reports_dir()
    with exclusive(folder / ".claims.lock", "the table claims.csv"):
        rows = read_claims(folder)
        if not rows:
            return []
        return refresh_table_cells(folder, _CLAIMS_CELL, claims_markdown(rows), "claims_refreshed",
                                   provenance()["measured"])


_NUMERIC = ("seeds", "method_mean", "baseline_mean", "diff_mean", "ci_low", "ci_high")


def read_claims(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of `folder`'s claims.csv (numbers as floats; per-seed values space-separated, empty in
    rows written before they were stored), [] when no study has been written there. No folder: the
    reports folder's table, else the checkout's (`wsss.study_tables.table_folder`)."""
    return read_csv_rows(Path(folder or table_folder("claims.csv")) / "claims.csv", _NUMERIC)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="every paper's claim over seeds: paired difference, 95% CI, verdict")
    p.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--claims", nargs="*", default=None, choices=[c.key for c in CLAIMS],
                   help="a subset of the claims (default: all)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side in this many processes, each with cores/jobs threads (default 1)")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_study)


def run_study(preset: str, seeds: int, keys: Sequence[str] | None = None, progress: bool = False, jobs: int = 1,
              **settings: Any) -> list[dict[str, Any]]:
    """Every claim (or those named by `keys`) over seeds 0..seeds-1, added to reports/claims.* as
    each claim completes (an interrupted study keeps the claims it finished); `jobs` processes
    side by side (`measure_claims`)."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    unknown = sorted(set(keys or ()) - {c.key for c in CLAIMS})
    if unknown:
        raise ValueError(f"no claim {', '.join(unknown)}; claims: {', '.join(c.key for c in CLAIMS)}")
    chosen = [c for c in CLAIMS if keys is None or c.key in keys]
    rows: dict[int, dict[str, Any]] = {}
    for i, row in measure_claims([(c, settings) for c in chosen], preset, range(seeds), jobs, progress):
        rows[i] = row
        written = write_claims([row])
    rows_in_order = [rows[i] for i in sorted(rows)]
    print(claims_markdown(rows_in_order))
    print(f"wrote {written}")
    return rows_in_order


def _cmd_study(args: argparse.Namespace) -> int:
    run_study(args.preset, args.seeds, args.claims, progress=args.progress, jobs=args.jobs)
    return 0
