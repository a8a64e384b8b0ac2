"""Independent pieces of work (a study's seeds, the demo's notebooks) side by side in processes.

On a CPU, `jobs` processes with cores // jobs threads each train more images per second than one
process with every thread (one thread per process: 1.19x for the CAM on a 2-core Xeon, measured by
`wsss.benchmarks.train`), and on a machine with many cores a study's seeds need not wait for each
other. Every worker uses the run's device: on a GPU one job is the rule. Workers are spawned, not
forked: a forked copy of a process that already ran torch can deadlock in its thread pools. A
worker whose parent is gone (killed, say, by a SIGTERM or SIGKILL that reached it alone) stops
itself as a scheduler's SIGTERM would stop it (training saves a checkpoint of its last step)
instead of training on, unseen, beside the next run, and exits once that call has ended.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence

from wsss.progress import TEXT_ENV


def threads_per_job(jobs: int) -> int:
    """The threads each of `jobs` processes gets: this process's budget (OMP_NUM_THREADS when set,
    else every core) shared evenly, at least one."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, (int(budget) if budget.isdigit() else os.cpu_count() or 1) // jobs)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap torch's (OpenMP) and MKL's thread pools at `threads`."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


ORPHAN_POLL_S = 2.0  # how often a worker looks for its parent
ORPHAN_GRACE_S = 120.0  # how long an orphan's SIGTERM may take (a checkpoint) before it exits at once
_parent_pid = 0  # the pool's process, as the worker saw it at its start


def _orphaned() -> bool:
    return os.getppid() != _parent_pid


def _stop_when_orphaned() -> None:
    while not _orphaned():
        time.sleep(ORPHAN_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _start_worker(threads: int) -> None:
    global _parent_pid
    _parent_pid = os.getppid()
    threading.Thread(target=_stop_when_orphaned, name="orphan-watch", daemon=True).start()
    os.environ.update(thread_env(threads))  # read when torch loads in the worker, which is after this
    os.environ[TEXT_ENV] = "1"  # several workers' bars share one terminal: text, redrawn at most every 30 s
    import torch

    torch.set_num_threads(threads)


def _call_in_worker(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """fn(*args); an orphan exits as soon as the call ends (training stopped by the watch's SIGTERM,
    its checkpoint saved) rather than idling until ORPHAN_GRACE_S for work that will never come."""
    try:
        return fn(*args)
    finally:
        if _orphaned():
            os._exit(1)


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` spawned worker processes with `threads_per_job(jobs)` threads each, their progress
    bars (where the work asks for them) in sparse text."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads_per_job(jobs),))


def completed_in_processes(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]],
                           jobs: int) -> Iterator[tuple[int, Any]]:
    """(index, fn(*calls[index])) as each call finishes, in `jobs` spawned processes (`process_pool`),
    started in order. `fn` must be importable (a module-level function). A failing call stops the
    calls that have not started and raises; finished results were already yielded."""
    pool = process_pool(jobs)
    try:
        futures = {pool.submit(_call_in_worker, fn, args): i for i, args in enumerate(calls)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:  # nothing is pending after the last result; after a failure, what has not started is dropped
        pool.shutdown(wait=True, cancel_futures=True)
