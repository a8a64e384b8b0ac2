"""Batch execution of notebooks with papermill: `wsss run` and `wsss demo`.

`wsss run NOTEBOOK -p key value ...` executes a notebook into reports/ with parameters, so a
parameter sweep is a shell loop. `wsss demo` generates SynthVOC and runs every method notebook
that exists, then prints the summary table.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import time
from pathlib import Path
from typing import Any

from wsss.io import write_json
from wsss.paths import notebooks_dir, project_root, reports_dir

# The demo's order: data first, methods next, the comparison last (it reads the others' runs).
DEMO_NOTEBOOKS = ("00_dataset", "01_cam_baseline", "02_eps", "03_vwl", "04_sance", "05_rcm_mam",
                  "06_shape_cues", "07_compare")


def resolve_notebook(name: str | os.PathLike) -> Path:
    path = Path(name)
    for candidate in (path, path.with_suffix(".ipynb"), notebooks_dir() / path.name,
                      (notebooks_dir() / path.name).with_suffix(".ipynb")):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    raise FileNotFoundError(f"notebook {name} not found; available in {notebooks_dir()}: {available}")


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true'/'True' -> True, '[1, 2]' -> [1, 2], anything else stays a string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def run_notebook(notebook: str | os.PathLike, parameters: dict[str, Any] | None = None,
                 output_dir: str | os.PathLike | None = None, kernel_name: str = "python3",
                 progress: bool = True) -> Path:
    """Execute `notebook` with `parameters` into `output_dir` (reports/ by default); returns the output path.

    The output notebook is written as execution goes, so a failure leaves the cell and its
    traceback in it.
    """
    import papermill

    source = resolve_notebook(notebook)
    out_dir = Path(output_dir) if output_dir else reports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / source.name
    papermill.execute_notebook(str(source), str(output), parameters=parameters or {}, kernel_name=kernel_name,
                               cwd=str(project_root()), progress_bar=progress)
    return output


def run_demo(preset: str = "quick", notebooks: tuple[str, ...] = DEMO_NOTEBOOKS, progress: bool = True) -> dict[str, float]:
    from wsss.data import synthvoc

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synthvoc.generate(synthvoc.default_root(preset, 0), preset=preset, seed=0, progress=progress)
    timings["synthvoc"] = time.perf_counter() - t0
    for name in notebooks:
        if not (notebooks_dir() / f"{name}.ipynb").is_file():
            print(f"[demo] {name}: no such notebook yet, skipped")
            continue
        t = time.perf_counter()
        print(f"[demo] running {name} (preset={preset})", flush=True)
        run_notebook(name, {"preset": preset}, progress=progress)
        timings[name] = time.perf_counter() - t
        print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)
    timings["total"] = time.perf_counter() - t0
    write_json(reports_dir() / "demo_timing.json", {k: round(v, 1) for k, v in timings.items()})
    return timings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="execute a notebook with parameters into reports/ (papermill)")
    p.add_argument("notebook", help="a notebook path or a name in notebooks/, e.g. 01_cam_baseline")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="set a parameter of the notebook's `parameters` cell (repeatable)")
    p.add_argument("-o", "--output-dir", default=None, help="where the executed notebook goes (default reports/)")
    p.add_argument("-k", "--kernel", default="python3")
    p.set_defaults(func=_cmd_run)

    d = subparsers.add_parser("demo", help="SynthVOC + every method notebook into reports/, then the summary table")
    d.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    d.add_argument("--notebooks", nargs="*", default=list(DEMO_NOTEBOOKS))
    d.set_defaults(func=_cmd_demo)


def _cmd_run(args: argparse.Namespace) -> int:
    params = {k: parse_value(v) for k, v in args.parameter}
    out = run_notebook(args.notebook, params, args.output_dir, args.kernel)
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    timings = run_demo(args.preset, tuple(args.notebooks))
    md = reports_dir() / "metrics.md"
    if md.is_file():
        print("\n" + md.read_text())
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0
