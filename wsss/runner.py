"""Batch execution of notebooks with papermill: `wsss run` and `wsss demo`.

`wsss run NOTEBOOK -p key value ...` executes a notebook with parameters into its own file,
`reports/runs/<notebook>__<key>-<value>....ipynb`, so a parameter sweep is a shell loop and no
run overwrites another's notebook. Parameters are checked against the notebook's `parameters`
cell before anything runs. A notebook executes into a temporary file that replaces the output
only when every cell succeeded; a failed run is kept beside it as `<name>.failed.ipynb` and
leaves the last good report as it was. `wsss demo` generates SynthVOC and runs every method's
main run, then the comparison, into reports/demo/ (its own notebooks, figures and table);
`wsss demo --full` adds the ablations, sweeps, final networks and the claims study over seeds,
into reports/.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from wsss.cache import digest
from wsss.io import write_json
from wsss.paths import notebooks_dir, portable, project_root, reports_dir
from wsss.progress import TEXT_ENV

# The notebooks that are not a method's: the dataset first, the comparison last (it reads every
# method's run).
DATASET_NOTEBOOK, COMPARE_NOTEBOOK = "00_dataset", "07_compare"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# Run after the comparison by the full demo only: every main run scored on SynthVOC's probe splits.
FULL_ONLY_NOTEBOOKS: tuple[str, ...] = ("08_probes",)
# What the quick demo switches off, in every notebook that has the parameter: the ablations and
# sweeps of the method notebooks, the final networks and their ground-truth reference in the
# comparison. `wsss demo --full` runs them.
MAIN_ONLY: dict[str, Any] = {"ablations": False, "final_methods": [], "upper_bound": False}
FULL_DEMO_COMMAND = ".venv/bin/wsss demo --full --jobs 2"
# The notebook whose main run, the CAM baseline, the other method notebooks start from or compare
# with: the demo starts it first. Those in BASELINE_FREE_NOTEBOOKS do not read that run before it is
# made (05 trains its own CAM baseline, at its shorter schedule), so they start beside it; any other
# would only wait on its lock, its core idle.
BASELINE_NOTEBOOK = "01_cam_baseline"
BASELINE_FREE_NOTEBOOKS = frozenset({"05_rcm_mam"})
# Seconds each method notebook took in the quick demo (one thread each, two side by side, fp32, this
# 2-core machine), used only to order the notebooks when no timing of an earlier demo is at hand
# (`demo_order`): a notebook left alone at the end would leave a core idle.
QUICK_DEMO_SECONDS: dict[str, float] = {"01_cam_baseline": 144, "02_eps": 152, "03_vwl": 156, "04_sance": 334,
                                        "05_rcm_mam": 434, "06_shape_cues": 308}


def demo_notebooks(full: bool = False) -> tuple[str, ...]:
    """The demo's order: the dataset, each main method's notebook (from the method registry), the
    comparison, and with `full` the analyses of the main runs (`FULL_ONLY_NOTEBOOKS`)."""
    from wsss.methods.base import main_methods, method_class

    methods = list(dict.fromkeys(method_class(m).notebook for m in main_methods()))
    return (DATASET_NOTEBOOK, *methods, COMPARE_NOTEBOOK, *(FULL_ONLY_NOTEBOOKS if full else ()))


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


class NotebookFailed(RuntimeError):
    """A cell raised; the message names the cell, the error and the notebook that shows it."""


def notebook_parameters(source: Path) -> dict[str, Any]:
    """{name: default value} of the notebook's `parameters` cell."""
    import papermill

    params = {}
    for name, info in papermill.inspect_notebook(str(source)).items():
        try:
            params[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            params[name] = None  # an expression: its type is not known here
    return params


def check_parameters(source: Path, parameters: dict[str, Any]) -> None:
    """Unknown names and values of the wrong type (against non-None defaults) are errors that
    list the notebook's parameters; values the defaults cannot type are checked by the library."""
    known = notebook_parameters(source)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in known.items())
        raise ValueError(f"{source.stem} has no parameter {', '.join(unknown)}; its parameters: {listing}")
    for name, value in parameters.items():
        default = known[name]
        if default is None or value is None:
            continue
        expected = float if isinstance(default, float) else type(default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else (
            isinstance(value, expected) and (expected is bool or not isinstance(value, bool)))
        if not ok:
            raise ValueError(f"parameter {name} of {source.stem} takes {expected.__name__} values "
                             f"(default {default!r}), got {value!r}")


def output_name(source: Path, parameters: dict[str, Any]) -> str:
    """`<stem>__<key>-<value>...ipynb` from the parameters (sorted), a hash when that grows long."""
    if not parameters:
        return source.name
    parts = "__".join(f"{k}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', str(v)).strip('_')}"
                      for k, v in sorted(parameters.items()))
    stem = f"{source.stem}__{parts}"
    return f"{stem if len(stem) <= 120 else f'{source.stem}__{digest(parameters, 12)}'}.ipynb"


def run_notebook(notebook: str | os.PathLike, parameters: dict[str, Any] | None = None,
                 output_dir: str | os.PathLike | None = None, kernel_name: str = "python3",
                 progress: bool = True, output: str | None = None) -> Path:
    """Execute `notebook` with `parameters` into `output_dir` (reports/runs/ by default) as
    `output` (default: named by the parameters, see `output_name`); returns the output path.

    Execution goes to a temporary file beside the output, renamed onto it when every cell
    succeeded; on failure it becomes `<output stem>.failed.ipynb` (the failing cell and its
    traceback in it) and `NotebookFailed` is raised, the previous output untouched.
    """
    import papermill

    source = resolve_notebook(notebook)
    parameters = parameters or {}
    check_parameters(source, parameters)
    out_dir = Path(output_dir) if output_dir else reports_dir() / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (output or output_name(source, parameters))
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.stem}.", suffix=".running.ipynb")
    os.close(fd)
    try:
        # The kernel inherits both: text bars in the saved outputs, and figures embedded in the
        # notebook (a MPLBACKEND=Agg of the caller's shell would leave the saved notebook without them).
        with _environment(**{TEXT_ENV: "1", "MPLBACKEND": INLINE_BACKEND}):
            papermill.execute_notebook(str(source), tmp, parameters=parameters, kernel_name=kernel_name,
                                       cwd=str(project_root()), progress_bar=progress)
    except papermill.PapermillExecutionError as e:
        failed = target.with_name(f"{target.stem}.failed.ipynb")
        os.replace(tmp, failed)
        raise NotebookFailed(f"{source.stem}, cell {e.exec_count}: {e.ename}: {e.evalue} "
                             f"(executed notebook: {portable(failed)}; {portable(target)} left as it was)") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record_portable_paths(Path(tmp), source, target)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def record_portable_paths(executed: Path, source: Path, target: Path) -> None:
    """Papermill records the absolute input path and the temporary output path; the saved notebook
    names the project-relative source and its final name instead, the same on every machine."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    meta["input_path"], meta["output_path"] = portable(source), portable(target)
    nbformat.write(nb, executed)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """`values` set in os.environ for the block (child processes inherit them), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_demo(preset: str = "quick", notebooks: tuple[str, ...] | None = None, progress: bool = True,
             jobs: int = 1, full: bool = False, seeds: int = 5) -> dict[str, float]:
    """SynthVOC, then `notebooks`; returns seconds per stage and in total.

    The quick demo (default) runs each method's main run with its pictures and rows, with the
    parameters in `MAIN_ONLY` switched off, into `demo_reports_dir()`: notebooks, figures and
    table of its own, so the full reports stay as they are. `full` runs every notebook as it
    stands, with the claims study over `seeds` seeds (`wsss study`) before the comparison, into
    reports/. Either table starts empty (its earlier rows go to its metrics_history.csv).
    With `jobs` > 1 the method notebooks run side by side, each in its own process with
    cores // jobs threads, in the order of `demo_order` (notebooks that need the same run wait on
    its lock, see `wsss.io.exclusive`); the dataset notebook runs first and the comparison last, alone.
    """
    notebooks = notebooks or demo_notebooks(full)
    out_dir = reports_dir() if full else demo_reports_dir()
    with _environment(WSSS_REPORTS=str(out_dir)):  # the notebooks' kernels inherit it
        return _demo(preset, notebooks, out_dir, progress, jobs, full, seeds)


def demo_reports_dir() -> Path:
    """Where the quick demo writes its notebooks, figures and table."""
    return reports_dir() / "demo"


def _demo(preset: str, notebooks: tuple[str, ...], out_dir: Path, progress: bool, jobs: int, full: bool,
          seeds: int) -> dict[str, float]:
    from wsss.data import synthvoc
    from wsss.report import archive_table

    archive_table()  # the demo's table holds the demo's rows; earlier ones go to metrics_history.csv
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    synthvoc.generate(synthvoc.default_root(preset, 0), preset=preset, seed=0, progress=progress,
                      workers=max(1, jobs))  # nothing else runs yet: one render process per job slot
    timings["synthvoc"] = time.perf_counter() - t0
    present = [n for n in notebooks if (notebooks_dir() / f"{n}.ipynb").is_file()]
    for name in sorted(set(notebooks) - set(present)):
        print(f"[demo] {name}: no such notebook yet, skipped")
    params = {n: {"preset": preset, **({} if full else demo_switches(resolve_notebook(n)))} for n in present}
    first = [n for n in present if n == DATASET_NOTEBOOK]
    last = [n for n in present if n in (COMPARE_NOTEBOOK, *FULL_ONLY_NOTEBOOKS)]
    middle = [n for n in present if n not in first + last]
    for name in first:
        timings[name] = _timed_notebook(name, params[name], out_dir, progress)
    if jobs > 1 and len(middle) > 1:
        middle = demo_order(middle, out_dir / "demo_timing.json", jobs)
        timings.update(_parallel_notebooks(middle, params, out_dir, jobs))
    else:
        for name in middle:
            timings[name] = _timed_notebook(name, params[name], out_dir, progress)
    if full and seeds > 1:
        from wsss.claims import run_study

        t = time.perf_counter()
        print(f"[demo] claims study over {seeds} seeds (wsss study)", flush=True)
        run_study(preset, seeds, progress=progress, jobs=jobs)
        timings["study"] = time.perf_counter() - t
    for name in last:
        timings[name] = _timed_notebook(name, params[name], out_dir, progress)
    timings["total"] = time.perf_counter() - t0
    write_json(out_dir / "demo_timing.json",
               {**{k: round(v, 1) for k, v in timings.items()}, "jobs": jobs, "full": full})
    if not full:
        skipped = sorted({k for n in present for k in params[n] if k != "preset"})
        print(f"[demo] skipped ({', '.join(f'{k}={v}' for k, v in MAIN_ONLY.items() if k in skipped)}): the "
              f"ablations and sweeps, the final networks, the seeds of the claims study and the probe splits "
              f"({', '.join(FULL_ONLY_NOTEBOOKS)}). All of them, into "
              f"reports/ (hours on CPU): {FULL_DEMO_COMMAND}", flush=True)
    return timings


def demo_order(names: list[str], timing_file: Path, jobs: int = 2) -> list[str]:
    """The order in which `jobs` slots, each taking the next notebook when it frees, finish soonest,
    by the seconds an earlier demo wrote to `timing_file`, else by `QUICK_DEMO_SECONDS`; unknown
    ones last, in their order. `BASELINE_NOTEBOOK` comes first, and the notebooks that need its run
    wait until it ends (`schedule_end`). Longest first is the start (and kept on ties); every order of
    up to `EXACT_ORDER_MAX` known notebooks is then tried, since longest first can leave one slot idle
    for a minute and more at the end (measured: 826 s vs 810 s for the quick demo's six)."""
    seconds = dict(QUICK_DEMO_SECONDS)
    if timing_file.is_file():
        seconds.update({k: v for k, v in json.loads(timing_file.read_text()).items()
                        if k in names and isinstance(v, (int, float))})
    first = [n for n in names if n == BASELINE_NOTEBOOK]
    known = sorted((n for n in names if n in seconds and n not in first), key=lambda n: -seconds[n])
    unknown = [n for n in names if n not in seconds and n not in first]

    def end(order: Sequence[str]) -> float:
        chain = [*first, *order]
        return schedule_end([seconds.get(n, 0.0) for n in chain], jobs,
                            [bool(first) and i > 0 and n not in BASELINE_FREE_NOTEBOOKS for i, n in enumerate(chain)])

    best, best_end = known, end(known)
    if len(known) <= EXACT_ORDER_MAX:
        for order in itertools.permutations(known):
            order_end = end(order)
            if order_end < best_end - 1e-9:
                best, best_end = list(order), order_end
    return [*first, *best, *unknown]


EXACT_ORDER_MAX = 8  # 8! = 40,320 orders, a fraction of a second


def schedule_end(durations: list[float], jobs: int, waits_for_first: Sequence[bool] | None = None) -> float:
    """When the last of `durations` ends if `jobs` slots each take the next one as soon as they free;
    one marked in `waits_for_first` holds its slot without progress until the first one has ended."""
    free = [0.0] * max(1, jobs)
    first_end = 0.0
    for i, d in enumerate(durations):
        slot = free.index(min(free))
        start = max(free[slot], first_end) if waits_for_first and waits_for_first[i] else free[slot]
        free[slot] = start + d
        if i == 0:
            first_end = free[slot]
    return max(free)


def demo_switches(source: Path) -> dict[str, Any]:
    """The parameters of `MAIN_ONLY` that the notebook has."""
    known = notebook_parameters(source)
    return {k: v for k, v in MAIN_ONLY.items() if k in known}


def _timed_notebook(name: str, parameters: dict[str, Any], out_dir: Path, progress: bool) -> float:
    t = time.perf_counter()
    print(f"[demo] running {name} ({_describe(parameters)})", flush=True)
    run_notebook(name, parameters, out_dir, progress=progress, output=f"{name}.ipynb")
    seconds = time.perf_counter() - t
    print(f"[demo] {name} done in {seconds:.0f} s", flush=True)
    return seconds


def _describe(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


def _parallel_notebooks(names: list[str], parameters: dict[str, dict[str, Any]], out_dir: Path,
                        jobs: int) -> dict[str, float]:
    """Run `names` as `wsss run` subprocesses, `jobs` at a time; a failure stops the demo after
    the running ones finish (their logs are in runs/demo_logs/)."""
    import subprocess
    import sys

    from wsss.paths import runs_dir

    from wsss.parallel import thread_env, threads_per_job

    threads = threads_per_job(jobs)
    env = {**os.environ, **thread_env(threads)}
    log_dir = runs_dir() / "demo_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, timings, failed = list(names), {}, {}, []
    while pending or running:
        while pending and len(running) < jobs and not failed:
            name = pending.pop(0)
            log = open(log_dir / f"{name}.log", "w")
            cmd = [sys.executable, "-m", "wsss.cli", "run", name, "-o", str(out_dir), "--output", f"{name}.ipynb"]
            for key, value in parameters[name].items():
                cmd += ["-p", key, json.dumps(value)]
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                             time.perf_counter())
            print(f"[demo] started {name} ({_describe(parameters[name])}, {threads} thread{'s' * (threads > 1)}, "
                  f"log {log.name})", flush=True)
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
        raise RuntimeError(f"demo notebooks failed: {failed}; executed notebooks with the error are in {out_dir}")
    return timings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="execute a notebook with parameters into reports/runs/ (papermill)")
    p.add_argument("notebook", help="a notebook path or a name in notebooks/, e.g. 01_cam_baseline")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="set a parameter of the notebook's `parameters` cell (repeatable)")
    p.add_argument("-o", "--output-dir", default=None, help="where the executed notebook goes (default reports/runs/)")
    p.add_argument("--output", default=None,
                   help="file name of the executed notebook (default: the notebook's name and the parameters)")
    p.add_argument("-k", "--kernel", default="python3")
    p.set_defaults(func=_cmd_run)

    n = subparsers.add_parser("notebooks", help="list the notebooks and their parameters")
    n.add_argument("names", nargs="*", help="only these notebooks")
    n.set_defaults(func=_cmd_notebooks)

    d = subparsers.add_parser("demo", help="SynthVOC + every method's main run into reports/demo/, then the "
                              "comparison (--full: ablations, final networks, claims study, into reports/)")
    d.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    d.add_argument("--notebooks", nargs="*", default=None,
                   help="default: the dataset, every main method's notebook, the comparison")
    d.add_argument("--jobs", type=int, default=1,
                   help="method notebooks run side by side (each with cores // jobs threads); default 1")
    d.add_argument("--full", action="store_true",
                   help="also every ablation, sweep and final network, and the claims study, into reports/")
    d.add_argument("--seeds", type=int, default=5, help="seeds of the --full claims study (default 5, 1: none)")
    d.set_defaults(func=_cmd_demo)


def _cmd_run(args: argparse.Namespace) -> int:
    repeated = sorted({k for k, _ in args.parameter if [n for n, _ in args.parameter].count(k) > 1})
    if repeated:
        raise ValueError(f"parameter {', '.join(repeated)} given more than once")
    params = {k: parse_value(v) for k, v in args.parameter}
    out = run_notebook(args.notebook, params, args.output_dir, args.kernel, output=args.output)
    print(f"wrote {portable(out)}")
    return 0


def _cmd_notebooks(args: argparse.Namespace) -> int:
    import papermill

    for path in sorted(notebooks_dir().glob("*.ipynb")):
        if args.names and path.stem not in args.names:
            continue
        print(path.stem)
        for name, info in papermill.inspect_notebook(str(path)).items():
            print(f"    {name} = {info['default']}" + (f"  # {info['help']}" if info["help"] else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    timings = run_demo(args.preset, tuple(args.notebooks) if args.notebooks else None, jobs=args.jobs,
                       full=args.full, seeds=args.seeds)
    md = (reports_dir() if args.full else demo_reports_dir()) / "metrics.md"
    if md.is_file():
        print("\n" + md.read_text())
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0
