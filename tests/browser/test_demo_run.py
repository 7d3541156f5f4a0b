"""`make run` survives its own drills: a SIGKILLed worker comes back by itself while the web
keeps serving, and an admin's policy edit survives a restart of `make run` (seed_demo loads
only what is missing). The real thing: `make run` on free ports with its own var/ (SQLite,
the filesystem broker), honcho, the demo's supervisor, Chromium for the admin's edit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from rollbacks.management.commands.seed_demo import DEMO_PASSWORD
from tests.browser.conftest import screenshot
from tests.rollbacks.engine_estate import wait_for

pytestmark = [pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
WORKER_BACK_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MakeRun:
    """`make run` in its own session, its output in a log file."""

    def __init__(self, var: Path, log: Path):
        self.var, self.log = var, log
        self.port, self.targets = _free_port(), _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        ready = self.ready_count() if self.log.exists() else 0
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
        } | {
            "PORT": str(self.port),
            "DEMO_TARGETS_PORT": str(self.targets),
            "UNWIND_VAR_DIR": str(self.var),
            "TARGET_DATABASE_ORDERS": f"sqlite:///{self.var / 'demo-orders.sqlite3'}",
            "DEBUG": "1",
        }
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                ["make", "run"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.serves, 180, f"make run to serve {self.base}\n{self.tail()}")
        wait_for(lambda: self.ready_count() > ready, 60, "the worker to be ready")

    def serves(self) -> bool:
        assert self.proc.poll() is None, f"make run exited:\n{self.tail()}"
        try:
            return httpx.get(self.base + "/login/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def ready_count(self) -> int:
        return sum(" ready." in line for line in self.log.read_text().splitlines())

    def worker_pid(self) -> int | None:
        """The Celery worker the demo's supervisor runs (its child)."""
        tree = _descendants(self.proc.pid)
        supervisors = {pid for pid, cmd in tree.items() if "demo.supervise" in cmd}
        workers = [pid for pid in tree if pid not in supervisors and _ppid(pid) in supervisors]
        return workers[0] if workers else None

    def stop(self) -> None:
        left = _descendants(self.proc.pid) if self.proc else {}
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        _kill_if_still(left | self.orphans)

    orphans: dict[int, str] = {}  # pool children of a worker the test killed


def _kill_if_still(processes: dict[int, str]) -> None:
    """SIGKILL each of these processes that is still the one recorded (same command line),
    so that a recycled pid is never hit."""
    for pid, cmd in processes.items():
        with contextlib.suppress(OSError):
            now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if now == cmd:
                os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


def _descendants(root: int) -> dict[int, str]:
    """Every process under ``root`` (honcho gives each of its processes a session of its
    own), with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = _ppid(int(entry.name))
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                with contextlib.suppress(OSError):
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    frontier.append(pid)
    return {pid: cmd.decode() for pid, cmd in found.items()}


@pytest.fixture
def make_run(tmp_path):
    run = MakeRun(tmp_path / "var", tmp_path / "make-run.log")
    yield run
    run.stop()


def _critical_approvals(var: Path) -> int:
    conn = sqlite3.connect(var / "unwind.sqlite3")
    try:
        (n,) = conn.execute(
            "SELECT approvals_required FROM governance_approvalpolicy WHERE name = 'critical'"
        ).fetchone()
    finally:
        conn.close()
    return n


def test_a_killed_worker_comes_back_and_an_admins_edit_survives_a_restart(make_run, browser):
    make_run.start()

    # 1. SIGKILL the worker, as the drill fault does: the supervisor starts it again.
    worker = wait_for(make_run.worker_pid, 30, "the worker's pid")
    ready = make_run.ready_count()
    make_run.orphans = _descendants(worker)  # its pool children, which outlive it
    killed_at = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: make_run.ready_count() > ready, WORKER_BACK_S, "the worker to come back")
    back_s = time.monotonic() - killed_at
    assert make_run.worker_pid() not in (None, worker)
    assert make_run.serves() and make_run.proc.poll() is None  # honcho kept everything up
    assert "supervise:" in make_run.log.read_text()
    print(f"worker back in {back_s:.2f} s")

    # 2. Dave (admin) changes the critical policy in Django admin: one approval, not two.
    assert _critical_approvals(make_run.var) == 2
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{make_run.base}/login/?next=/admin/governance/approvalpolicy/")
        page.get_by_label("Username").fill("dave")
        page.get_by_label("Password").fill(DEMO_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="critical", exact=True).click()
        page.get_by_label("Approvals required").fill("1")
        page.get_by_role("button", name="Save", exact=True).click()
        page.locator(".messagelist .success").wait_for()
        screenshot(page, "demo-1-admin-edited-the-critical-policy")
    finally:
        context.close()
    assert _critical_approvals(make_run.var) == 1

    # 3. Restart `make run`: the edit is kept (seed_demo loads only what is missing).
    make_run.stop()
    make_run.start()
    assert "estate: already loaded, kept as it is" in make_run.log.read_text()
    assert _critical_approvals(make_run.var) == 1
