"""The fully supervised ceiling and each method's weak/full ratio over seeds (`wsss ceiling`).

The papers divide a method's final segmentation mIoU by the same network's trained on ground
truth. One seed of each says little: the final network alone spreads about as much over seeds as
most claimed effects. So for every seed s, each mask source (ground truth, and each method's final
pseudo masks of the train split, from its run at seed s) trains the same final network
(`wsss.stages.final`, the preset's recipe) at seed s: the seed changes the new layers'
initialisation, the data order and the augmentation, as in `wsss study`, whose method runs these
are. Every network is scored on val with the same inference (multi-scale + flip), without and
with dense CRF.

Per source and CRF setting: the mean val mIoU with its 95% t-interval over seeds; the weak/full
ratio (the source's mIoU over the ground-truth network's, same seed, same CRF setting) with the
t-interval of the per-seed ratios; and whether the ceiling bounds the source: the ground-truth
network *without* CRF minus the source (paired by seed) has its interval above 0 ("bounded"),
below 0 ("exceeded") or across it ("inconclusive"). Final networks are cached by their config like
every run, so a rerun only trains what is missing.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from wsss.claims import paired_interval, provenance, verdict
from wsss.cli import add_progress_flag
from wsss.io import exclusive, merge_csv_rows, read_csv_rows, write_text
from wsss.paths import reports_dir
from wsss.study_tables import refresh_table_cells, table_folder

GROUND_TRUTH = "ground_truth"
# The weakly supervised sources: the CAM baseline and each paper's method (their final pseudo masks).
WEAK_SOURCES = ("cam", "eps", "vwl", "sance", "rcm_mam", "shape_cues")
SOURCES = (GROUND_TRUTH, *WEAK_SOURCES)
_NUMERIC = ("seeds", "miou_mean", "miou_low", "miou_high", "ratio_mean", "ratio_low", "ratio_high",
            "gap_mean", "gap_low", "gap_high")


def final_scores(source: str, preset: str, seed: int, final: dict[str, Any] | None = None,
                 progress: bool = False, **settings: Any) -> dict[str, Any]:
    """Val mIoU of the final network trained on `source`'s masks at `seed`, without and with CRF.
    `settings` go to the method run (run_root, data_root, max_steps, ...), `final` to the final
    stage's recipe (`SegConfig.for_preset`, e.g. max_steps)."""
    from wsss.experiment import experiment_factory
    from wsss.stages.final import FinalStage, SegConfig
    from wsss.train import autocast_enabled, device_named

    if source not in SOURCES:
        raise ValueError(f"no mask source {source!r}; sources: {', '.join(SOURCES)}")
    run = experiment_factory(preset, progress=progress, seed=seed, **settings)(
        "cam" if source == GROUND_TRUTH else source)  # the ground truth's stage reads only the run's data
    config = SegConfig.for_preset(preset, voc=run.is_real_voc(), seed=seed, **(final or {}))
    stage = (FinalStage.ground_truth(run, config, progress) if source == GROUND_TRUTH
             else FinalStage.from_experiment(run, config, progress=progress))
    t = time.perf_counter()
    trained = stage.train()
    scores = {"miou": float(stage.evaluate()["miou"]), "miou_crf": float(stage.evaluate(crf=True)["miou"])}
    bf16 = autocast_enabled(config.train, device_named(config.train.device))
    return {**scores, "precision": "bf16" if bf16 else "fp32", "train_s": trained.seconds,
            "seconds": time.perf_counter() - t, "run": stage.run_dir.name}


def _final_scores_in_worker(source: str, preset: str, seed: int, final: dict[str, Any] | None, progress: bool,
                            settings: dict[str, Any]) -> dict[str, Any]:
    return final_scores(source, preset, seed, final, progress, **settings)


def source_rows(source: str, values: Sequence[dict[str, Any]], ceiling: Sequence[dict[str, Any]],
                preset: str) -> list[dict[str, Any]]:
    """The rows (without and with CRF) of `source`, given its per-seed scores and the ground-truth
    network's at the same seeds (`ceiling`)."""
    if len(values) != len(ceiling) or not values:
        raise ValueError(f"{source}: {len(values)} seeds of scores against {len(ceiling)} of the ceiling")
    rows = []
    for crf in (False, True):
        key = "miou_crf" if crf else "miou"
        mious = [v[key] for v in values]
        full = [c[key] for c in ceiling]
        mean, low, high = paired_interval(mious)
        ratio = paired_interval([m / f for m, f in zip(mious, full)])
        # The ceiling is the ground-truth network without CRF: it must bound every weak row, CRF included.
        gap = (math.nan,) * 3 if source == GROUND_TRUTH else paired_interval([c["miou"] - m
                                                                             for c, m in zip(ceiling, mious)])
        rows.append({"source": source, "crf": "yes" if crf else "no", "seeds": len(values),
                     "miou_mean": mean, "miou_low": low, "miou_high": high,
                     "ratio_mean": ratio[0], "ratio_low": ratio[1], "ratio_high": ratio[2],
                     "gap_mean": gap[0], "gap_low": gap[1], "gap_high": gap[2],
                     "ceiling": "" if source == GROUND_TRUTH else {"reproduced": "bounded", "contradicted": "exceeded"}
                     .get(verdict(gap[1], gap[2], True), "inconclusive"),
                     "preset": preset, "precision": values[0]["precision"],
                     "train_s": sum(v["train_s"] for v in values) / len(values),
                     "values": " ".join(f"{m:.6f}" for m in mious), **provenance()})
    return rows


def measure_finals(sources: Sequence[str], preset: str, seeds: Sequence[int], jobs: int = 1,
                   final: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                   progress: bool = False, **settings: Any) -> Iterator[list[dict[str, Any]]]:
    """The rows of each source (ground truth first, always measured) as soon as its seeds and the
    ceiling's are in. With `jobs` > 1 the (source, seed) pairs train in that many processes.
    `progress`: the bars of each network's training and scoring (text bars in the processes)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds to measure")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"no mask source {', '.join(unknown)}; sources: {', '.join(SOURCES)}")
    order = [GROUND_TRUTH] + [s for s in SOURCES if s in sources and s != GROUND_TRUTH]
    pairs = [(source, seed) for source in order for seed in seeds]
    scores: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in order}
    emitted: set[str] = set()

    def done(source: str, seed: int, value: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        scores[source][seed] = value
        log(f"[ceiling] {source} seed {seed}: final mIoU {value['miou']:.4f}, + CRF {value['miou_crf']:.4f} "
            f"({value['seconds']:.0f} s, {value['run']})")
        ready = len(scores[GROUND_TRUTH]) == len(seeds)
        for s in order:  # each source once, when both it and the ceiling have every seed
            if ready and len(scores[s]) == len(seeds) and s not in emitted:
                emitted.add(s)
                yield source_rows(s, [scores[s][k] for k in seeds], [scores[GROUND_TRUTH][k] for k in seeds], preset)

    if jobs == 1:
        for source, seed in pairs:
            yield from done(source, seed, final_scores(source, preset, seed, final, progress, **settings))
        return
    from wsss.parallel import completed_in_processes, threads_per_job

    jobs = min(jobs, len(pairs))
    log(f"[ceiling] {len(pairs)} final networks of (source, seed) pairs in {jobs} processes, "
        f"{threads_per_job(jobs)} thread(s) each")
    calls = [(source, preset, seed, final, progress, settings) for source, seed in pairs]
    for k, value in completed_in_processes(_final_scores_in_worker, calls, jobs):
        yield from done(*pairs[k], value)


def ceiling_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| masks | CRF | final mIoU (95% CI) | weak/full (95% CI) | ceiling − this (95% CI), points | "
             "ceiling | seeds | precision |", "|---|---|---|---|---|---|---|---|"]

    def ci(mean: float, low: float, high: float, scale: float = 100.0, signed: str = "") -> str:
        spread = "n/a" if math.isinf(low) else f"[{scale * low:{signed}.1f}, {scale * high:{signed}.1f}]"
        return f"{scale * mean:{signed}.1f} {spread}"

    for r in rows:
        gap = "" if r["source"] == GROUND_TRUTH else ci(r["gap_mean"], r["gap_low"], r["gap_high"], signed="+")
        lines.append(f"| {r['source']} | {r['crf']} | {ci(r['miou_mean'], r['miou_low'], r['miou_high'])} | "
                     f"{ci(r['ratio_mean'], r['ratio_low'], r['ratio_high'])}% | {gap} | {r['ceiling']} | "
                     f"{int(r['seeds'])} | {r['precision']} |")
    return "\n".join(lines) + "\n"


def write_ceiling(rows: Sequence[dict[str, Any]], folder: str | Path | None = None) -> Path:
    """reports/ceiling.csv (every column) and reports/ceiling.md; returns the Markdown file. Rows of
    sources that `rows` does not measure are kept; the table follows the order of SOURCES. The
    executed comparison notebooks in the folder (and its demo/ and runs/) show the new table too."""
    folder = Path(folder) if folder else reports_dir()
    rank = {s: i for i, s in enumerate(SOURCES)}
    merge_csv_rows(folder / "ceiling.csv", rows, key=lambda r: (r["source"], r["crf"]),
                   order=lambda r: (rank.get(r["source"], len(rank)), r["crf"]), numeric=_NUMERIC)
    with exclusive(folder / ".ceiling.lock", "the table ceiling.csv"):  # what a side-by-side writer merged shows too
        shown = ceiling_markdown(read_ceiling(folder))
        write_text(folder / "ceiling.md", shown)
        refresh_table_cells(folder, _CEILING_CELL, shown, "ceiling_refreshed", provenance()["measured"])
    return folder / "ceiling.md"


# The comparison notebook's cell that shows the ceiling (notebooks/src/07_compare.py): its output
# depends on reports/ceiling.csv alone.
_CEILING_CELL = "ceiling.read_ceiling()"


def read_ceiling(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of `folder`'s ceiling.csv (numbers as floats), [] when none was written there. No
    folder: the reports folder's table, else the checkout's (`wsss.study_tables.table_folder`)."""
    return read_csv_rows(Path(folder or table_folder("ceiling.csv")) / "ceiling.csv", _NUMERIC)


def run_ceiling(preset: str, seeds: int, sources: Sequence[str] | None = None, jobs: int = 1,
                progress: bool = False, **settings: Any) -> list[dict[str, Any]]:
    """Every source (or those named) over seeds 0..seeds-1, written to reports/ceiling.* as each
    source completes (an interrupted study keeps what it finished, and its networks are cached)."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    rows: list[dict[str, Any]] = []
    written = None
    for source_rows_ in measure_finals(sources or SOURCES, preset, range(seeds), jobs, progress=progress,
                                       **settings):
        rows += source_rows_
        written = write_ceiling(source_rows_)
    print(ceiling_markdown(rows))
    print(f"wrote {written}")
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ceiling", help="final networks over seeds: the ground-truth ceiling and weak/full ratios")
    p.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--sources", nargs="*", default=None, choices=SOURCES,
                   help="a subset of the mask sources (default: all; the ground truth is always trained)")
    p.add_argument("--jobs", type=int, default=1,
                   help="networks side by side in this many processes, each with cores/jobs threads (default 1)")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_ceiling)


def _cmd_ceiling(args: argparse.Namespace) -> int:
    run_ceiling(args.preset, args.seeds, args.sources, args.jobs, progress=args.progress)
    return 0
