"""demo/supervise.py as a real process: SIGTERM or SIGINT stops it and everything it runs
within a bound (honcho SIGKILLs it 5 s after its SIGTERM), and a command that dies is
started again, without what was left of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo import supervise
from tests.rollbacks.engine_estate import wait_for

ROOT = Path(__file__).resolve().parents[2]
STOP_BOUND_S = 3.0

# The supervised command: it starts a grandchild (as a Celery worker starts its pool), writes
# both pids, and either ignores SIGTERM (a worker slow to shut down) or exits on it.
CHILD = """
import json, signal, subprocess, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "a") as out:
    out.write(json.dumps([__import__("os").getpid(), pool.pid]) + "\\n")
while True:
    time.sleep(0.1)
"""


def _is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie runs nothing: it waits for its parent to reap it


@pytest.fixture
def leftovers():
    """Whatever a failing test leaves running is killed (by its own pid) at the end."""
    started: list[tuple[subprocess.Popen, Path]] = []
    yield started
    for proc, pids in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for pid in (pid for pair in _started(pids) for pid in pair):
            if not _is_gone(pid):
                os.kill(pid, signal.SIGKILL)


def _supervise(tmp_path: Path, mode: str, leftovers: list) -> tuple[subprocess.Popen, Path]:
    pids = tmp_path / "pids.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.supervise", sys.executable, "-c", CHILD, str(pids), mode],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    leftovers.append((proc, pids))
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 15, "the command to start")
    return proc, pids


def _started(pids: Path) -> list[list[int]]:
    return [json.loads(line) for line in pids.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("signum", "mode"),
    [
        (signal.SIGTERM, "obliging"),
        (signal.SIGTERM, "stubborn"),
        (signal.SIGINT, "stubborn"),
    ],
)
def test_a_stop_signal_stops_the_supervisor_its_command_and_the_commands_children(
    tmp_path, signum, mode, leftovers
):
    proc, pids = _supervise(tmp_path, mode, leftovers)
    [(child, pool)] = _started(pids)
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=STOP_BOUND_S)
    took = time.monotonic() - sent
    assert code == 0
    wait_for(lambda: _is_gone(child) and _is_gone(pool), STOP_BOUND_S - took, "the command gone")
    assert time.monotonic() - sent < STOP_BOUND_S
    if mode == "obliging":
        assert took < supervise.GRACE_S  # it did not wait for the grace period


def test_a_command_that_dies_is_started_again_without_its_leftovers(tmp_path, leftovers):
    proc, pids = _supervise(tmp_path, "obliging", leftovers)
    [(child, pool)] = _started(pids)
    os.kill(child, signal.SIGKILL)  # a drill's "kill the worker"
    wait_for(lambda: len(_started(pids)) == 2, 10, "the command to be started again")
    assert _is_gone(pool)  # the dead worker's pool process did not linger
    [_, (child2, pool2)] = _started(pids)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_BOUND_S) == 0
    wait_for(lambda: _is_gone(child2) and _is_gone(pool2), STOP_BOUND_S, "the command gone")
    assert "exited with -9; starting it again" in proc.stderr.read()
