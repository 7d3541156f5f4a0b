"""Run a command and start it again whenever it dies, as a supervisor (systemd, Kubernetes)
would: the demo's Celery worker survives a drill's "kill the worker" fault, and honcho, which
stops every process of the Procfile when one exits, never sees it die.

``python -m demo.supervise CMD [ARG…]``. SIGTERM or SIGINT is passed on to the command and
ends the loop; any other exit of the command (a crash, a SIGKILL) starts it again after
``RESTART_DELAY_S``, longer when it keeps dying at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

RESTART_DELAY_S = 0.5
MAX_DELAY_S = 10.0
HEALTHY_AFTER_S = 10.0  # a run this long resets the back-off


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m demo.supervise CMD [ARG…]", file=sys.stderr)
        return 2
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = RESTART_DELAY_S
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping:
            return code
        delay = RESTART_DELAY_S if time.monotonic() - started > HEALTHY_AFTER_S else delay
        print(
            f"supervise: {argv[0]} (pid {child.pid}) exited with {code}; "
            f"starting it again in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)
        if stopping:
            return code
        delay = min(delay * 2, MAX_DELAY_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
