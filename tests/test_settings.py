"""Settings come from the environment and fail loudly on bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "a-production-secret-key-that-is-long-and-random-enough-0123456789abcdef",
    "ALLOWED_HOSTS": "unwind.example.com",
    "DATABASE_URL": "postgres://unwind@db.internal:5432/unwind",
    "REDIS_URL": "redis://cache.internal:6379/0",
}


# Variables that would leak from this test run into the process under test.
_SCRUBBED = {
    "DEBUG",
    "SECRET_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "ALLOWED_HOSTS",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
}


def _django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "0"}, "SECRET_KEY is required when DEBUG is off"),
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "1", "DATABASE_URL": "nosuchdb://x/y"}, "DATABASE_URL is not a database URL"),
        (
            {"DEBUG": "1", "REDIS_URL": "http://localhost:6379"},
            "REDIS_URL='http://localhost:6379' must start",
        ),
        ({"DEBUG": "1", "MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES='lots' is not a whole number"),
        ({"DEBUG": "1", "MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES=10 is below its minimum of 1024"),
        ({"DEBUG": "0", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS is required"),
    ],
)
def test_bad_settings_fail_loudly_naming_the_variable(env, message):
    result = _django(env, "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_production_values_pass_check_deploy():
    result = _django(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_debug_values_fail_check_deploy():
    """The control for the test above: check --deploy does flag an insecure set-up."""
    result = _django({"DEBUG": "1"}, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W018" in result.stderr  # DEBUG on in deployment


def test_redis_url_selects_the_redis_broker_and_the_default_is_embedded():
    code = (
        "from config.celery import app; c = app.connection_for_write(); "
        "print(c.transport_cls, c.hostname, c.virtual_host, type(c.transport).__module__)"
    )
    embedded = _django({"DEBUG": "1"}, "shell", "-c", code)
    redis = _django({"DEBUG": "1", "REDIS_URL": "redis://127.0.0.1:6379/3"}, "shell", "-c", code)
    # The embedded one is kombu's filesystem transport writing messages atomically.
    assert embedded.stdout.split()[-1] == "config.broker"
    assert redis.stdout.split()[-4:] == ["redis", "127.0.0.1", "3", "kombu.transport.redis"]


def test_a_4xx_is_logged_once(tmp_path):
    """Django's own console handler (under DEBUG) and the root's both printed every 4xx."""
    import subprocess
    import sys

    code = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "Client(HTTP_HOST='localhost').post('/api/v1/runs', '{}', content_type='application/json')\n"
    )
    env = {**os.environ, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
    env["UNWIND_VAR_DIR"] = str(tmp_path)
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/db.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stderr.count("Unauthorized: /api/v1/runs") == 1, done.stderr[-2000:]
