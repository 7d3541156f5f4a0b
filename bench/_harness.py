"""What both benchmarks share: a throwaway PostgreSQL database, Redis db 13, real Celery
worker subprocesses, hard time limits and clean-up that always runs.

Call ``Bench.open()`` before importing anything from Django's apps: it sets
``DJANGO_SETTINGS_MODULE``, ``DATABASE_URL`` and ``REDIS_URL`` and only then runs
``django.setup()`` and ``migrate``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
WORKER_FLAGS = [
    "--loglevel",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--pool",
    "prefork",
]


class BenchTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise BenchTimeout("the benchmark ran past its hard time limit")


def _terminated(signum, frame):  # noqa: ARG001
    raise SystemExit(f"stopped by signal {signum}")  # so that clean-up runs


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> str:
    """Cores, load and server versions: the figures mean little without them."""
    import psycopg
    import redis

    with psycopg.connect(PG, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    rv = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}; PostgreSQL {pg}, Redis {rv}, loopback"


class Bench:
    """One benchmark run: ``with Bench("drain", limit_s=300) as b: ...``."""

    def __init__(self, name: str, *, limit_s: int):
        self.name, self.limit_s = name, limit_s
        self.db = f"unwind_bench_{secrets.token_hex(4)}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"unwind-bench-{name}-"))
        self.workers: list[subprocess.Popen] = []
        self.t0 = time.monotonic()
        self.db_created = False

    # Lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Bench:
        signal.signal(signal.SIGALRM, _alarm)
        signal.signal(signal.SIGTERM, _terminated)
        signal.signal(signal.SIGHUP, _terminated)
        signal.alarm(self.limit_s)
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        import psycopg
        import redis

        self.log(f"creating database {self.db}; worker logs in {self.workdir}")
        with psycopg.connect(PG, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET statement_timeout = '60s'")
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self.db_created = True
        self.database_url = f"postgres://postgres@127.0.0.1:5432/{self.db}"
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["REDIS_URL"] = REDIS_URL
        os.environ.setdefault("DEBUG", "1")
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.flushdb()

        import django

        django.setup()
        from django.core.management import call_command

        t = time.monotonic()
        call_command("migrate", verbosity=0, interactive=False)
        self.log(f"database {self.db} migrated in {time.monotonic() - t:.1f} s")

    def close(self) -> None:
        signal.alarm(0)
        for proc in self.workers:
            stop_process(proc)
        self.workers.clear()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if self.db_created:
            import psycopg

            try:
                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
                self.db_created = False
            except Exception as exc:  # report, never hide the benchmark's own error
                print(f"! could not drop database {self.db}: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            self.redis.flushdb()

    # Helpers -----------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def start_worker(
        self, concurrency: int, *, name: str = "w", settings: str = "config.settings"
    ) -> subprocess.Popen:
        """A real ``celery -A config.celery:app worker -I bench.tasks`` on this database and
        Redis db 13, in its own session (killed as a group). Returns once it ran a task."""
        log_path = self.workdir / f"worker-{name}.log"
        env = os.environ | {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": REDIS_URL,
            "DEBUG": "1",
            "DJANGO_SETTINGS_MODULE": settings,
            "LOG_LEVEL": "WARNING",
        }
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config.celery:app",
                    "worker",
                    "-I",
                    "bench.tasks",
                    "--concurrency",
                    str(concurrency),
                    "-n",
                    f"bench-{name}-{secrets.token_hex(3)}@%h",
                    *WORKER_FLAGS,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        proc.log_path = log_path
        from bench.tasks import READY_KEY
        from config.celery import app

        token = secrets.token_hex(4)
        # One ping per pool process is not guaranteed to reach each of them; one is enough to
        # know the worker consumes. Pool processes are forked before the first task.
        app.send_task("bench.tasks.ping", kwargs={"token": token})
        deadline = time.monotonic() + 60
        while True:
            if any(v.decode().startswith(token) for v in self.redis.lrange(READY_KEY, 0, -1)):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        self.redis.delete(READY_KEY)
        return proc

    def stop_worker(self, proc: subprocess.Popen) -> None:
        stop_process(proc)
        if proc in self.workers:
            self.workers.remove(proc)

    def worker_log_tail(self, proc: subprocess.Popen, chars: int = 3000) -> str:
        try:
            return Path(proc.log_path).read_text()[-chars:]
        except OSError:
            return ""


def stop_process(proc: subprocess.Popen) -> None:
    """Warm shutdown: SIGTERM to the worker's main process only, which stops consuming, lets
    the tasks in flight finish and returns prefetched messages to Redis. SIGKILL to the whole
    group after 20 s, and to any pool child left behind.

    (A SIGTERM to the whole group, as ``os.killpg`` does and systemd's default
    ``KillMode=control-group`` would, kills the pool children mid-task: Celery then acks
    their messages, so only the sweeper would run those steps again.)
    """
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def make_estate(slugs: list[str], *, edges: list[tuple[str, str, str]], latency_ms: int = 0):
    """A team, a superuser, one system per slug with a contract whose ``undo`` is a no-op
    simulated compensation, and a published dependency map. Returns the superuser."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from rollbacks import services
    from rollbacks.models import System, Team

    User = get_user_model()
    admin = User.objects.create_superuser("bench-admin", "bench@example.invalid", "x")
    team = Team.objects.create(
        slug="bench", name="Bench", group=Group.objects.create(name="team:bench")
    )
    admin.groups.add(team.group)
    System.objects.bulk_create(
        System(slug=s, name=s, kind=System.Kind.SERVICE, team=team, tier=3) for s in slugs
    )
    actions = {"undo": {"compensation": {"kind": "simulated", "latency_ms": latency_ms}}}
    for system in System.objects.filter(slug__in=slugs):
        services.contract_publish(system=system, actions=actions, actor=admin, note="bench")
    services.dependency_map_publish(edges=edges, actor=admin, note="bench")
    return admin
