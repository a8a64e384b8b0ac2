"""A paper's claim measured at several strengths of the phenomenon it targets (`wsss dose-response`).

SynthVOC plants each failure mode behind one generator setting. A dose-response sweep writes the
dataset at each strength (the preset's own strength reuses the preset's dataset and its runs) and
measures the claims that target the phenomenon there, over seeds, exactly as `wsss study` does:
the paired difference method - baseline with its 95% interval. The output says *when* a method
helps, not only whether it helps at one setting: `reports/dose_response.csv` (one row per knob,
strength and claim, added to the earlier rows) and a plot of effect against strength per knob.
"""
from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from wsss.cli import add_progress_flag
from wsss.io import merge_csv_rows, read_csv_rows
from wsss.paths import data_dir, reports_dir


@dataclass(frozen=True)
class Knob:
    """A SynthVOC setting that sets a phenomenon's strength, and the claims that target it."""

    field: str
    strengths: tuple[float, ...]
    claims: tuple[str, ...]
    what: str


KNOBS: dict[str, Knob] = {
    "cooccurrence": Knob("p_context", (0.5, 0.7, 0.9, 1.0), ("eps_context", "shape_cues_boundary"),
                         "probability that a train or a boat stands on its context"),
    "part_size": Knob("part_scale", (0.5, 1.0, 1.5, 2.0), ("vwl_parts", "mam_recall", "mam_parts"),
                      "length of horn and tail (area about 3, 8, 12 and 16% of the creature)"),
    "edge_strength": Knob("min_tone_contrast", (0.1, 0.3, 0.5, 0.7), ("sance_contours",),
                          "luminance gap between the two tones of an object"),
    "saliency_bias": Knob("p_saliency_miss_small", (0.0, 0.4, 0.7, 1.0), ("eps_pseudo", "eps_small"),
                          "probability that the saliency detector misses a small object"),
}


def knob_data_root(preset: str, field: str, value: float, progress: bool = False) -> str | None:
    """The SynthVOC tree of `preset` with `field` = `value`, written on first use; None when the
    value is the preset's own (its dataset, and every run cached on it, serve)."""
    from wsss.data import synthvoc

    if value == getattr(synthvoc.make_config(preset), field):
        return None
    root = data_dir() / f"synthvoc-{preset}-s0-{field}{value:g}"
    return str(synthvoc.generate(root, preset, 0, progress=progress, **{field: value}))


def measure_dose_response(knob: str, preset: str, seeds: int, strengths: Sequence[float] | None = None,
                          claims: Sequence[str] | None = None, progress: bool = False,
                          log: Callable[[str], None] = print, jobs: int = 1, **settings: Any) -> list[dict[str, Any]]:
    """Rows (a claim's `measure_claim` row plus knob, field and strength) for every strength and
    claim of `knob`, each written to reports/dose_response.csv as soon as it is measured; `jobs`
    processes side by side (`wsss.claims.measure_claims`)."""
    from wsss.claims import CLAIMS, measure_claims

    if knob not in KNOBS:
        raise ValueError(f"no knob {knob!r}; knobs: {', '.join(KNOBS)}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    spec = KNOBS[knob]
    keys = list(claims or spec.claims)
    unknown = sorted(set(keys) - {c.key for c in CLAIMS})
    if unknown:
        raise ValueError(f"no claim {', '.join(unknown)}; claims: {', '.join(c.key for c in CLAIMS)}")
    points, tasks = [], []
    for value in strengths or spec.strengths:  # every dataset is written before any run starts
        root = knob_data_root(preset, spec.field, value, progress)
        for claim in (c for c in CLAIMS if c.key in keys):
            points.append(value)
            tasks.append((claim, {**settings, "data_root": root}))
    log(f"[dose-response] {knob}: {spec.field} = {', '.join(f'{v:g}' for v in dict.fromkeys(points))}; "
        f"claims {', '.join(keys)}; {seeds} seeds")
    rows: dict[int, dict[str, Any]] = {}
    for i, row in measure_claims(tasks, preset, range(seeds), jobs, progress, log):
        rows[i] = {"knob": knob, "field": spec.field, "strength": points[i], **row}
        write_dose_response([rows[i]])
        log(f"[dose-response] {knob}: {spec.field}={points[i]:g}, {row['claim']}: {row['verdict']}")
    return [rows[i] for i in sorted(rows)]


_NUMERIC = ("strength", "seeds", "method_mean", "baseline_mean", "diff_mean", "ci_low", "ci_high")


def read_dose_response(folder: str | Path | None = None) -> list[dict[str, Any]]:
    return read_csv_rows((Path(folder) if folder else reports_dir()) / "dose_response.csv", _NUMERIC)


def write_dose_response(rows: Sequence[dict[str, Any]], folder: str | Path | None = None) -> Path:
    """Add `rows` to reports/dose_response.csv, replacing earlier rows of the same (knob, strength,
    claim, preset); returns the file."""
    path = (Path(folder) if folder else reports_dir()) / "dose_response.csv"
    key = lambda r: (r["knob"], float(r["strength"]), r["claim"], r["preset"])  # noqa: E731
    merge_csv_rows(path, rows, key=key, order=key, numeric=_NUMERIC)
    return path


def conditions_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One paragraph per method, from the measured curves: for each of its claims and knobs, the
    strengths at which the claim is reproduced, contradicted or inconclusive (95% CI over seeds),
    and the range of the effect in points."""
    paragraphs = []
    for paper in dict.fromkeys(r["paper"] for r in rows):
        sentences = []
        for claim, knob in dict.fromkeys((r["claim"], r["knob"]) for r in rows if r["paper"] == paper):
            pts = sorted((r for r in rows if r["claim"] == claim and r["knob"] == knob), key=lambda r: r["strength"])
            by_verdict = {v: ", ".join(f"{r['strength']:g}" for r in pts if r["verdict"] == v)
                          for v in dict.fromkeys(r["verdict"] for r in pts)}
            effects = [100 * r["diff_mean"] for r in pts]
            seeds = sorted({int(r["seeds"]) for r in pts})
            sentences.append(
                f"*{pts[0]['text']}* ({claim}: {pts[0]['metric']}, {pts[0]['better']} is better) over "
                f"{pts[0]['field']}: " + "; ".join(f"{v} at {at}" for v, at in by_verdict.items())
                + f"; {pts[0]['method']} - {pts[0]['baseline']} from {effects[0]:+.1f} to {effects[-1]:+.1f} points "
                f"(lowest strength to highest), {'-'.join(map(str, seeds))} seeds.")
        paragraphs.append(f"**{paper}.** " + " ".join(sentences))
    return "\n\n".join(paragraphs)


def plot_dose_response(rows: Sequence[dict[str, Any]], knob: str):
    """Left: the effect (method - baseline, points, with its 95% interval) against the knob's
    strength, one line per claim; a single seed has no interval and is drawn as a bare point.
    Right: both arms' means, which tell whether the effect moves with the method or the baseline."""
    import matplotlib.pyplot as plt

    spec = KNOBS[knob]
    fig, (ax, arms) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for claim in dict.fromkeys(r["claim"] for r in rows if r["knob"] == knob):
        pts = sorted((r for r in rows if r["knob"] == knob and r["claim"] == claim), key=lambda r: r["strength"])
        x = [r["strength"] for r in pts]
        y = [100 * r["diff_mean"] for r in pts]
        err = [[0 if math.isinf(r["ci_low"]) else 100 * (r["diff_mean"] - r["ci_low"]) for r in pts],
               [0 if math.isinf(r["ci_high"]) else 100 * (r["ci_high"] - r["diff_mean"]) for r in pts]]
        label = f"{claim}: {pts[0]['metric']} ({pts[0]['better']} is better), {int(pts[0]['seeds'])} seeds"
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)[0]
        arms.plot(x, [100 * r["method_mean"] for r in pts], marker="o", color=line.get_color(),
                  label=f"{pts[0]['method']}")
        arms.plot(x, [100 * r["baseline_mean"] for r in pts], marker="s", ls="--", color=line.get_color(),
                  label=f"{pts[0]['baseline']} ({claim})")
    ax.axhline(0, color="0.5", lw=0.8)
    for a in (ax, arms):
        a.set_xlabel(textwrap.fill(f"{spec.field}: {spec.what}", 60), fontsize=8)  # two panels side by side
        a.legend(fontsize=7)
    ax.set_ylabel("method - baseline (points, 95% CI)", fontsize=8)
    arms.set_ylabel("mean over seeds (%)", fontsize=8)
    fig.tight_layout()
    return fig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dose-response", help="a claim's effect at several strengths of its phenomenon")
    p.add_argument("--knob", required=True, choices=list(KNOBS))
    p.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--strengths", type=float, nargs="+", default=None, help="default: the knob's four")
    p.add_argument("--claims", nargs="+", default=None, help="default: the claims that target the knob")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side in this many processes, each with cores/jobs threads (default 1)")
    p.add_argument("--plot-only", action="store_true",
                   help="measure nothing: redraw the table and plot from reports/dose_response.csv")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_dose_response)


def _cmd_dose_response(args: argparse.Namespace) -> int:
    from wsss import viz

    if not args.plot_only:
        measure_dose_response(args.knob, args.preset, args.seeds, args.strengths, args.claims, progress=args.progress,
                              jobs=args.jobs)
    rows = [r for r in read_dose_response() if r["knob"] == args.knob and r["preset"] == args.preset]
    if not rows:
        raise ValueError(f"no {args.knob} rows at preset {args.preset} in {reports_dir() / 'dose_response.csv'}")
    print(viz.markdown_table(rows, ["strength", "claim", "method_mean", "baseline_mean", "diff_mean", "ci_low",
                                    "ci_high", "seeds", "verdict"],
                              percent=["method_mean", "baseline_mean", "diff_mean", "ci_low", "ci_high"]))
    print(f"wrote {reports_dir() / 'dose_response.csv'} and "
          f"{viz.save_figure(plot_dose_response(rows, args.knob), f'dose_response_{args.knob}')}")
    return 0
