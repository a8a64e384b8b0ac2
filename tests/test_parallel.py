"""Work in spawned processes: what happens to the workers when their parent goes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT = """
import os, time
from wsss.parallel import process_pool
pool = process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 600)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; only its entry waits to be reaped
        return f.read().split(") ")[-1][0] != "Z"


def test_a_worker_stops_when_its_parent_is_killed() -> None:
    """A SIGKILL that reaches only the parent (`kill PID`, an out-of-memory kill) must not leave its
    workers training on unseen: each stops within a few of its polls."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker outlived its parent by 30 s"
