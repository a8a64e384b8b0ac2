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


def run_demo(preset: str = "quick", notebooks: tuple[str, ...] = DEMO_NOTEBOOKS, progress: bool = True,
             jobs: int = 1) -> dict[str, float]:
    """SynthVOC, then `notebooks` into reports/; returns seconds per stage and in total.

    With `jobs` > 1 the method notebooks run side by side, each in its own process with
    cores // jobs threads (notebooks that need the same run wait on its lock, see
    `wsss.io.exclusive`); the dataset notebook runs first and the comparison last, alone.
    """
    from wsss.data import synthvoc
    from wsss.report import archive_table

    archive_table()  # the demo's table holds the demo's rows; earlier ones go to metrics_history.csv
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synthvoc.generate(synthvoc.default_root(preset, 0), preset=preset, seed=0, progress=progress)
    timings["synthvoc"] = time.perf_counter() - t0
    present = [n for n in notebooks if (notebooks_dir() / f"{n}.ipynb").is_file()]
    for name in sorted(set(notebooks) - set(present)):
        print(f"[demo] {name}: no such notebook yet, skipped")
    first = [n for n in present if n.startswith("00_")]
    last = [n for n in present if n.startswith("07_")]
    middle = [n for n in present if n not in first + last]
    for name in first:
        timings[name] = _timed_notebook(name, preset, progress)
    if jobs > 1 and len(middle) > 1:
        timings.update(_parallel_notebooks(middle, preset, jobs))
    else:
        for name in middle:
            timings[name] = _timed_notebook(name, preset, progress)
    for name in last:
        timings[name] = _timed_notebook(name, preset, progress)
    timings["total"] = time.perf_counter() - t0
    write_json(reports_dir() / "demo_timing.json", {**{k: round(v, 1) for k, v in timings.items()}, "jobs": jobs})
    return timings


def _timed_notebook(name: str, preset: str, progress: bool) -> float:
    t = time.perf_counter()
    print(f"[demo] running {name} (preset={preset})", flush=True)
    run_notebook(name, {"preset": preset}, progress=progress)
    seconds = time.perf_counter() - t
    print(f"[demo] {name} done in {seconds:.0f} s", flush=True)
    return seconds


def _parallel_notebooks(names: list[str], preset: str, jobs: int) -> dict[str, float]:
    """Run `names` as `wsss run` subprocesses, `jobs` at a time; a failure stops the demo after
    the running ones finish (their logs are in runs/demo_logs/)."""
    import subprocess
    import sys

    from wsss.paths import runs_dir

    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_dir = runs_dir() / "demo_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, timings, failed = list(names), {}, {}, []
    while pending or running:
        while pending and len(running) < jobs and not failed:
            name = pending.pop(0)
            log = open(log_dir / f"{name}.log", "w")
            cmd = [sys.executable, "-m", "wsss.cli", "run", name, "-p", "preset", preset]
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                             time.perf_counter())
            print(f"[demo] started {name} (preset={preset}, {threads} thread{'s' * (threads > 1)}, log {log.name})",
                  flush=True)
        time.sleep(2)
        for name, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            timings[name] = time.perf_counter() - start
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log.name})"
            print(f"[demo] {name} {status} in {timings[name]:.0f} s", flush=True)
            if proc.returncode != 0:
                failed.append(name)
        if failed and not running:
            pending.clear()
    if failed:
        raise RuntimeError(f"demo notebooks failed: {failed}; executed notebooks with the error are in {reports_dir()}")
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
    d.add_argument("--jobs", type=int, default=1,
                   help="method notebooks run side by side (each with cores // jobs threads); default 1")
    d.set_defaults(func=_cmd_demo)


def _cmd_run(args: argparse.Namespace) -> int:
    params = {k: parse_value(v) for k, v in args.parameter}
    out = run_notebook(args.notebook, params, args.output_dir, args.kernel)
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    timings = run_demo(args.preset, tuple(args.notebooks), jobs=args.jobs)
    md = reports_dir() / "metrics.md"
    if md.is_file():
        print("\n" + md.read_text())
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0
