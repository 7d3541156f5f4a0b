"""Shared fixtures: the fixed cast of users and the guards that keep CI honest.

The cast (STYLE.md): alice (operator), bob (approver), carol (auditor), dave (admin),
mallory (outsider). Set ``UNWIND_REQUIRE_SERVICES=1`` (``.ci/run`` does) to make a skipped
``postgres``, ``redis`` or ``tools(...)`` test fail the run instead of passing silently, naming
what it needed.

``@pytest.mark.tools("amtool", "prometheus-alertmanager")`` marks a test that needs those
commands on the PATH: without them it is skipped, saying which are missing (``.ci/run``
installs them, the way it installs Chromium).
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

REQUIRE_SERVICES = os.environ.get("UNWIND_REQUIRE_SERVICES") == "1"

# PBKDF2 with fewer iterations: see tests/hashers.py.
settings.PASSWORD_HASHERS = ["tests.hashers.FastPBKDF2PasswordHasher"]
# nodeid -> what it needed (a service or a tool) and did not have
_skipped_service_tests: dict[str, str] = {}


def missing_tools(item) -> list[str]:
    """The commands a ``tools(...)`` marker names that are not on the PATH."""
    return [
        tool
        for marker in item.iter_markers("tools")
        for tool in marker.args
        if shutil.which(tool) is None
    ]


def _needs(item) -> list[str]:
    needs = []
    if "postgres" in item.keywords and not settings.IS_POSTGRES:
        needs.append("PostgreSQL (set DATABASE_URL=postgres://…)")
    if "redis" in item.keywords and not os.environ.get("REDIS_URL"):
        needs.append("Redis (set REDIS_URL=redis://…)")
    if missing := missing_tools(item):
        needs.append(f"{', '.join(missing)} (not on the PATH; .ci/run installs it)")
    return needs


def pytest_collection_modifyitems(config, items):
    for item in items:
        if needs := _needs(item):
            item.add_marker(pytest.mark.skip(reason="needs " + "; ".join(needs)))
            item.user_properties.append(("unwind_needs", "; ".join(needs)))


def pytest_runtest_logreport(report):
    """A skipped test that needs a service or a tool, whatever skipped it, is recorded."""
    needs = dict(report.user_properties).get("unwind_needs")
    if report.skipped and (needs or {"postgres", "redis", "tools"} & set(report.keywords)):
        _skipped_service_tests[report.nodeid] = needs or str(report.longrepr[-1])


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_SERVICES and _skipped_service_tests:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if REQUIRE_SERVICES and _skipped_service_tests:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped_service_tests)} test(s) that need a service or a tool "
            "were skipped:",
            red=True,
        )
        for nodeid, needs in _skipped_service_tests.items():
            terminalreporter.write_line(f"  {nodeid}: needs {needs}", red=True)


def _user(django_user_model, username: str, *groups: str, **extra):
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, **extra
    )
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return user


def service_token(django_user_model, name: str, *groups: str) -> str:
    """A service account with these groups (roles and ``team:<slug>``), and its raw token."""
    from rollbacks.tokens import token_create

    user = django_user_model.objects.create_user(name)
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return token_create(user=user, name=name)[1]


@pytest.fixture
def teams(db):
    from rollbacks.models import Team

    return {
        slug: Team.objects.create(
            slug=slug, name=slug.title(), group=Group.objects.create(name=f"team:{slug}")
        )
        for slug in ("payments", "platform")
    }


@pytest.fixture
def alice(django_user_model, teams):
    return _user(django_user_model, "alice", "operator", "team:payments")


@pytest.fixture
def bob(django_user_model, teams):
    return _user(django_user_model, "bob", "approver", "team:payments")


@pytest.fixture
def carol(django_user_model, teams):
    return _user(django_user_model, "carol", "auditor")


@pytest.fixture
def dave(django_user_model, teams):
    return _user(django_user_model, "dave", "admin", is_staff=True, is_superuser=True)


@pytest.fixture
def mallory(django_user_model, teams):
    return _user(django_user_model, "mallory")


@pytest.fixture
def make_system(teams):
    from rollbacks.models import System

    def make(slug: str, *, team: str = "payments", tier: int = 2, kind: str = "service", **extra):
        return System.objects.create(
            slug=slug,
            name=slug.replace("-", " ").title(),
            kind=kind,
            team=teams[team],
            tier=tier,
            **extra,
        )

    return make


@pytest.fixture
def target_server():
    """A real loopback HTTP target (demo/targets.py) on a free port; yields (base_url, state)."""
    from demo.targets import serve

    server, state = serve(0)
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def database_url_for_subprocess() -> str:
    """The URL of the database this test run uses (pytest-django's test database)."""
    from django.db import connection

    s = connection.settings_dict
    if not settings.IS_POSTGRES:
        raise RuntimeError("a worker process needs a database it can share: run with PostgreSQL")
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_celery(
    args: list[str], log_path, extra_env: dict[str, str] | None = None, ready: str = "ready."
):
    """Start ``celery -A config <args>`` against Redis and this run's test database; wait
    until its log shows ``ready``. The process leads its own session so a test can kill the
    whole worker (parent and pool children) with ``os.killpg``."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = (
        os.environ
        | {"DATABASE_URL": database_url_for_subprocess(), "DEBUG": "1"}
        | (extra_env or {})
    )
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    root = Path(__file__).resolve().parent.parent
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", *args],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while ready not in Path(log_path).read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"celery {args[0]} did not start:\n{Path(log_path).read_text()}")
        time.sleep(0.1)
    proc.log_path = log_path
    return proc


def stop_process(proc, sig=None) -> None:
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, sig or signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


WORKER_ARGS = [
    "worker",
    "--loglevel",
    "INFO",
    "--concurrency",
    "2",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
]


@pytest.fixture
def worker_process(transactional_db, tmp_path):
    """A real Celery worker process on Redis and this run's PostgreSQL test database.

    Yields the ``subprocess.Popen``; its output goes to ``tmp_path/worker.log``. Redis's
    database is flushed first so that messages from another test cannot leak in.
    """
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    proc = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    yield proc
    stop_process(proc)
