"""Work in spawned processes: what happens to the workers when their parent goes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import os, time
from wsss.parallel import process_pool
pool = process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 600)
time.sleep(600)
"""


# A call that, like training, turns SIGTERM into KeyboardInterrupt (after its checkpoint), so the
# worker survives the signal and must leave on its own.
TRAINING_LIKE_JOB = """
import os, signal, time


def wait_for_sigterm():
    def stop(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    print(os.getpid(), flush=True)  # the worker shares its parent's stdout
    while True:
        time.sleep(0.05)
"""

TRAINING_LIKE_PARENT = """
from wsss.parallel import completed_in_processes
import job
for _ in completed_in_processes(job.wait_for_sigterm, [()], 1):
    pass
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; only its entry waits to be reaped
        return f.read().split(") ")[-1][0] != "Z"


def _kill_parent_and_wait_for(parent: subprocess.Popen, seconds: float) -> None:
    """SIGKILL `parent`, whose first line of output is its worker's pid; fail unless the worker has
    gone `seconds` later."""
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + seconds
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, f"the worker outlived its parent by {seconds:.0f} s"


def test_a_worker_stops_when_its_parent_is_killed() -> None:
    """A SIGKILL that reaches only the parent (`kill PID`, an out-of-memory kill) must not leave its
    workers training on unseen: each stops within a few of its polls."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    _kill_parent_and_wait_for(parent, 30)


def test_an_orphan_that_survives_its_sigterm_exits_once_its_call_ends(tmp_path: Path) -> None:
    """Training answers the watch's SIGTERM with a checkpoint and KeyboardInterrupt, which the pool's
    worker loop catches: the worker must then exit, not idle for ORPHAN_GRACE_S (120 s)."""
    (tmp_path / "job.py").write_text(TRAINING_LIKE_JOB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", TRAINING_LIKE_PARENT], stdout=subprocess.PIPE, text=True,
                              env=env)
    _kill_parent_and_wait_for(parent, 20)
