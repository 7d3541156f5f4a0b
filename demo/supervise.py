"""Run a command and start it again whenever it dies, as a supervisor (systemd, Kubernetes)
would: the demo's Celery worker survives a drill's "kill the worker" fault, and honcho, which
stops every process of the Procfile when one exits, never sees it die.

``python -m demo.supervise CMD [ARG…]``.

1. The command runs in a process group of its own (its pool processes with it), so that
   the supervisor can stop all of it and nothing is left behind.
2. Any exit of the command but a stop (a crash, a SIGKILL) starts it again after
   ``RESTART_DELAY_S``, longer when it keeps dying at once; what is left of the dead
   command's group (a killed worker's pool processes) is killed first.
3. SIGTERM or SIGINT stops it: the signal is passed on to the command, which has
   ``GRACE_S`` to exit; then its whole group is SIGKILLed and the supervisor exits. honcho
   SIGKILLs what has not exited 5 s after its SIGTERM, which would orphan the worker; a
   killed step is safe (its lease expires and another worker runs it again: docs/engine.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

RESTART_DELAY_S = 0.5
MAX_DELAY_S = 10.0
HEALTHY_AFTER_S = 10.0  # a run this long resets the back-off
GRACE_S = 2.0  # how long a stopped command may take to exit before it is killed
TICK_S = 0.05  # how often the supervisor looks at its child and at a stop request


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stop(child: subprocess.Popen, signum: int) -> int:
    """Pass the stop on, give the command GRACE_S, then kill its group."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=GRACE_S)
    _kill_group(child.pid)  # the command if it is still there, and its pool processes
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=GRACE_S)
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m demo.supervise CMD [ARG…]", file=sys.stderr)
        return 2
    # The handler only records the request; the loop below acts on it within TICK_S, so a
    # signal arriving while a command is being started is never lost.
    requested: list[int] = []

    def request_stop(signum, _frame):
        requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    delay = RESTART_DELAY_S
    while not requested:
        started = time.monotonic()
        child = subprocess.Popen(argv, start_new_session=True)
        while child.poll() is None and not requested:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=TICK_S)
        if requested:
            return _stop(child, requested[0])
        _kill_group(child.pid)  # a killed worker's pool processes
        delay = RESTART_DELAY_S if time.monotonic() - started > HEALTHY_AFTER_S else delay
        print(
            f"supervise: {argv[0]} (pid {child.pid}) exited with {child.returncode}; "
            f"starting it again in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not requested:
            time.sleep(TICK_S)
        delay = min(delay * 2, MAX_DELAY_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
