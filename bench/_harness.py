"""What both benchmarks share: a throwaway PostgreSQL database, Redis db 13, real Celery
worker subprocesses, hard time limits and clean-up that always runs.

Call ``Bench.open()`` before importing anything from Django's apps: it sets
``DJANGO_SETTINGS_MODULE``, ``DATABASE_URL`` and ``REDIS_URL`` and only then runs
``django.setup()`` and ``migrate``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
OWNER_KEY = "bench:owner"  # the database name of the run that flushed Redis last
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

    def __init__(self, name: str, *, limit_s: int, redis_url: str = REDIS_URL):
        self.name, self.limit_s, self.redis_url = name, limit_s, redis_url
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
        self.secret_key = f"bench-{secrets.token_urlsafe(48)}"  # this run's processes only
        self.signing_key = base64.b64encode(secrets.token_bytes(32)).decode()
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["REDIS_URL"] = self.redis_url
        os.environ.setdefault("DEBUG", "1")
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        self.redis = redis.Redis.from_url(self.redis_url)
        self.flush_redis()

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

    def flush_redis(self) -> None:
        """Empty this run's Redis db, and mark it as this run's (``redis_was_shared``)."""
        self.redis.flushdb()
        self.redis.set(OWNER_KEY, self.db)

    def redis_was_shared(self) -> str:
        """Why this run's Redis db was not its own ('' if it was): another run that did not
        take the lock flushes it (losing this run's messages) or publishes into it."""
        try:
            owner = self.redis.get(OWNER_KEY)
        except Exception as exc:  # noqa: BLE001 (a report, not a failure)
            return f"could not read {OWNER_KEY}: {exc}"
        if owner is None or owner.decode() != self.db:
            return (
                f"Redis {self.redis_url} was flushed or taken over during the run (another "
                "benchmark without the lock?): the figures are not this run's alone"
            )
        return ""

    def start_worker(
        self, concurrency: int, *, name: str = "w", settings: str = "config.settings"
    ) -> subprocess.Popen:
        """A real ``celery -A config.celery:app worker -I bench.tasks`` on this database and
        Redis db 13, in its own session (killed as a group). Returns once it ran a task."""
        argv = [sys.executable, "-m", "celery", "-A", "config.celery:app", "worker"]
        argv += ["-I", "bench.tasks", "--concurrency", str(concurrency)]
        argv += ["-n", f"bench-{name}-{secrets.token_hex(3)}@%h", *WORKER_FLAGS]
        env = {"DJANGO_SETTINGS_MODULE": settings, "LOG_LEVEL": "WARNING"}
        proc = self.spawn(argv, name=f"worker-{name}", env=env)
        self.wait_consuming(proc, name)
        return proc

    def start_production_worker(
        self,
        *,
        name: str = "w",
        concurrency: int = 2,
        env: dict | None = None,
        wait: bool = True,
        pool: str = "",
    ) -> subprocess.Popen:
        """The ``worker:`` line of Procfile.demo as it stands (so a change of the production
        command is measured without touching the benchmark), with ``--concurrency`` set to
        ``concurrency``, ``-I bench.tasks`` (the baseline tasks and the ping the harness
        waits for) and a node name. Returns once it ran a task (unless ``wait`` is false)."""
        line_env, argv = production_command("worker")
        argv = with_option(argv, "--concurrency", str(concurrency))
        if pool:  # a candidate pool, for a comparison (docs/engine.md)
            argv = with_option(argv, "--pool", pool)
        argv += ["-I", "bench.tasks", "-n", f"bench-{name}-{secrets.token_hex(3)}@%h"]
        proc = self.spawn(argv, name=f"worker-{name}", env=line_env | (env or {}))
        if wait:
            self.wait_consuming(proc, name)
        return proc

    def start_production_beat(self, *, env: dict | None = None) -> subprocess.Popen:
        """The ``beat:`` line of Procfile.demo, with its schedule file in the work folder.
        Returns once beat says it started (it sends its first sweep straight away)."""
        line_env, argv = production_command("beat")
        argv = with_option(argv, "--schedule", str(self.workdir / "beat-schedule"))
        proc = self.spawn(argv, name="beat", env=line_env | (env or {}))
        deadline = time.monotonic() + 60
        while "beat: Starting" not in Path(proc.log_path).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"beat did not start:\n{self.worker_log_tail(proc)}")
            time.sleep(0.1)
        return proc

    def spawn(self, argv: list[str], *, name: str, env: dict | None = None) -> subprocess.Popen:
        """A process of the project on this database and Redis db 13, in its own session
        (stopped as a group in ``close``), its output in ``<workdir>/<name>.log``."""
        log_path = self.workdir / f"{name}.log"
        full_env = os.environ | {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            # Production settings, as the workers of a real deployment run: DEBUG off (no
            # query log around every statement), so a throwaway key, hosts and signing key.
            "DEBUG": "0",
            "SECRET_KEY": self.secret_key,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LEDGER_SIGNING_KEY": self.signing_key,
            "UNWIND_VAR_DIR": str(self.workdir / "var"),
        }
        full_env.pop("LOG_LEVEL", None)  # the production default (INFO) unless env says
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=full_env | (env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        proc.log_path = log_path
        return proc

    def start_target(
        self, *, delay_ms: float, name: str = "target"
    ) -> tuple[subprocess.Popen, str]:
        """``bench.http_target`` in a process of its own; ``(process, base URL)``."""
        proc = self.spawn(
            [sys.executable, "-u", "-m", "bench.http_target", "--delay-ms", str(delay_ms)],
            name=name,
        )
        deadline = time.monotonic() + 20
        while not (m := re.search(r"^port (\d+)$", Path(proc.log_path).read_text(), re.M)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.worker_log_tail(proc)}")
            time.sleep(0.05)
        return proc, f"http://127.0.0.1:{m.group(1)}"

    def wait_consuming(self, proc: subprocess.Popen, name: str) -> None:
        """Until the worker ran a ``bench.tasks.ping``."""
        log_path = proc.log_path
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

    def stop_worker(self, proc: subprocess.Popen) -> None:
        stop_process(proc)
        if proc in self.workers:
            self.workers.remove(proc)

    def worker_log_tail(self, proc: subprocess.Popen, chars: int = 3000) -> str:
        try:
            return Path(proc.log_path).read_text()[-chars:]
        except OSError:
            return ""


def production_command(process: str, procfile: Path = ROOT / "Procfile.demo"):
    """``(env, argv)`` of a Procfile line: ``exec`` dropped, ``$BIN_DIR`` the folder of this
    Python (the project's virtualenv), leading ``NAME=value`` words as environment, and a
    restart wrapper in front of ``celery`` (``python -m demo.supervise celery …``) dropped:
    the benchmark runs Celery itself, and supervises it where it needs to (bench.recovery)."""
    for line in procfile.read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == process:
            break
    else:
        raise RuntimeError(f"{procfile.name} has no {process}: line")
    bin_dir = str(Path(sys.executable).parent)
    words = shlex.split(command.replace("${BIN_DIR}", bin_dir).replace("$BIN_DIR", bin_dir))
    env = {}
    while words and (words[0] == "exec" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0])):
        word = words.pop(0)
        if word != "exec":
            name, _, value = word.partition("=")
            env[name] = value
    celery = next((i for i, word in enumerate(words) if Path(word).name == "celery"), 0)
    return env, words[celery:]


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option value`` (or ``option=value``) replaced, or appended."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            out.append(word)
    return [*out, option, value]


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


def bulk_runs(admin, process: str, tag: str, systems_per_run: list[list]) -> list:
    """One process run per entry of ``systems_per_run``, with a completed forward action
    (``undo``, ``params.id`` unique) on each of its systems, in order; bulk-created."""
    from rollbacks.models import ForwardAction, ProcessRun

    runs = ProcessRun.objects.bulk_create(
        ProcessRun(process=process, external_id=str(i), created_by=admin, trace_id=f"{i + 1:032x}")
        for i in range(len(systems_per_run))
    )
    ForwardAction.objects.bulk_create(
        (
            ForwardAction(
                run=run,
                sequence=j + 1,
                system=system,
                action_type="undo",
                status=ForwardAction.Status.COMPLETED,
                params={"j": j, "id": f"{tag}-{run.pk}-{j}"},
                idempotency_key=f"{tag}-{run.pk}-{j}",
                trace_id=run.trace_id,
            )
            for run, systems in zip(runs, systems_per_run, strict=True)
            for j, system in enumerate(systems)
        ),
        batch_size=2000,
    )
    return runs
