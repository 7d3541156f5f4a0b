"""Gives each pytest-xdist worker resources of its own, before Django reads its settings.

Loaded as a plugin (``-p tests.isolation`` in pyproject's ``addopts``), so it runs before
pytest-django imports ``config.settings``. Under ``pytest -n N`` the worker ``gwK``:

- uses Redis database ``D + K``, where ``D`` is the one ``REDIS_URL`` names (``.ci/run``
  uses 14, so 14 and 15 with two workers): the Celery worker processes a test starts, the
  tasks the test publishes, and the ``flushdb()`` before each worker start stay within it;
- keeps its ``var/`` (the embedded broker, a beat schedule, the development signing key)
  in ``$UNWIND_VAR_DIR/gwK`` (``var/gwK`` by default);
- gets its own PostgreSQL test database from pytest-django (``test_<name>_gwK``).

Without xdist (or with ``-n 0``) nothing changes. No test needs a fixed port: the demo's
targets are served on a free port and the estate is pointed at them (the ``demo_targets``
fixture in ``tests/browser/conftest.py``), so `make test` runs beside `make run`.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

REDIS_DATABASES = 16  # Redis's default `databases`


def _redis_url_for(url: str, index: int) -> str:
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/")
    base = int(path) if path else 0
    db = base + index
    if db >= REDIS_DATABASES:
        raise pytest.UsageError(
            f"pytest-xdist worker {index} would need Redis database {db} ({url} + {index}): "
            f"name a lower database in REDIS_URL or run fewer workers"
        )
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def isolate(environ: os._Environ | dict, worker: str) -> None:
    """Point ``environ`` at worker ``worker``'s own Redis database and var/ directory."""
    # xdist names a worker that replaces a crashed one gw<N+…>: it takes a slot in 0..N-1
    # (the crash has failed the run already).
    index = int(worker.removeprefix("gw")) % int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if environ.get("REDIS_URL"):
        environ["REDIS_URL"] = _redis_url_for(environ["REDIS_URL"], index)
    root = Path(__file__).resolve().parent.parent
    var_dir = Path(environ.get("UNWIND_VAR_DIR") or root / "var")
    environ["UNWIND_VAR_DIR"] = str(var_dir / worker)


def pytest_configure(config: pytest.Config) -> None:
    """In the controller, refuse a worker count that would run out of Redis databases (a
    worker that failed at start-up would leave the run with no test and exit status 0)."""
    workers = len(getattr(config.option, "tx", None) or [])
    if workers and os.environ.get("REDIS_URL") and not os.environ.get("PYTEST_XDIST_WORKER"):
        _redis_url_for(os.environ["REDIS_URL"], workers - 1)


if _worker := os.environ.get("PYTEST_XDIST_WORKER"):
    isolate(os.environ, _worker)
