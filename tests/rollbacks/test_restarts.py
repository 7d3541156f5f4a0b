"""SPEC §3.4 with real parts: a Redis restart and a PostgreSQL restart (as the workers see
it) in the middle of a rollback. Every rollback still reaches its terminal state, in stage
order, with one effect per step at the targets.

- Redis: a Redis server of the test's own (so that nothing else on the machine loses its
  queues) is SIGKILLed while a step's HTTP call is in flight and started again empty, with
  no persistence: every message queued or unacknowledged at that moment is gone. Celery's
  worker may exit on that (kombu tries to give its unacknowledged message back to the
  dead server on close and fails: "Unrecoverable error: AttributeError … 'hostname'"); the
  test then starts it again, as the deployment's supervisor does (docker-compose
  ``restart: unless-stopped``, systemd ``Restart=always``).
- PostgreSQL: every connection of the worker and of beat is terminated by the server
  (``pg_terminate_backend``, what a restart does to them) while a step is in flight; the
  shared cluster itself is not restarted, as other databases live on it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time

import psycopg
import pytest

from config.celery import app
from rollbacks import engine
from rollbacks.models import Rollback, Step
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks import engine_estate
from tests.rollbacks.engine_estate import orders_in as _orders
from tests.rollbacks.engine_estate import state_of as _state
from tests.rollbacks.engine_estate import step_of as _step
from tests.rollbacks.engine_estate import wait_for as _wait

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]
S, R = Step.State, Rollback.State
PATH = "/orders-api/orders/1/cancel"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """``redis-server`` on a free loopback port, in memory only."""

    def __init__(self, tmp_path):
        self.port = _free_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        _wait(lambda: _pings(client), timeout=10, what="the private Redis")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 (not up yet)
        return False


def _drop_broker_connections() -> None:
    """Close every pooled broker connection of this process and forget the pools."""
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@contextlib.contextmanager
def _broker(url: str):
    """Point this process's Celery app (the outbox publishes from here) at ``url``."""
    before = app.conf.broker_url
    app.conf.broker_url = url
    _drop_broker_connections()
    try:
        yield
    finally:
        app.conf.broker_url = before
        _drop_broker_connections()


@pytest.fixture
def services(orders_target, target_server, make_system, transactional_db, tmp_path):
    """Estate, the target database and HTTP target, a private Redis, a worker and beat."""
    base, state = target_server
    engine_estate.build(make_system, base)
    broker = PrivateRedis(tmp_path)
    broker.start()
    env = {"REDIS_URL": broker.url, "SWEEP_INTERVAL_S": "1"}
    ctx = {"target": state, "db": orders_target, "broker": broker, "tmp": tmp_path}
    with _broker(broker.url):
        ctx["worker"] = start_celery(WORKER_ARGS, tmp_path / "worker.log", extra_env=env)
        ctx["supervisor"] = Supervisor(ctx, env)
        ctx["beat"] = start_celery(
            ["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
            tmp_path / "beat.log",
            extra_env=env,
            ready="beat: Starting",
        )
        try:
            yield ctx
        finally:
            ctx["supervisor"].close()
            stop_process(ctx["worker"])
            stop_process(ctx["beat"])
            broker.stop()


class Supervisor:
    """Starts the worker again whenever it exits, as docker-compose or systemd would."""

    def __init__(self, ctx, env):
        self.ctx, self.env, self.restarts = ctx, env, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.5):
            if self.ctx["worker"].poll() is not None:
                self.restarts += 1
                log = self.ctx["tmp"] / f"worker-{self.restarts + 1}.log"
                self.ctx["worker"] = start_celery(WORKER_ARGS, log, extra_env=self.env)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=40)


def _finish(rollback, alice, ctx, timeout: float = 90.0):
    """Resolve the manual payment step when it comes up; wait for the end."""
    _wait(
        lambda: _step(rollback, "payment-gateway").state == S.WAITING_HUMAN,
        timeout=timeout,
        what="the manual step of stage 3",
    )
    engine.step_resolve(step=_step(rollback, "payment-gateway"), actor=alice, note="by hand")
    try:
        _wait(lambda: _state(rollback) == R.SUCCEEDED, timeout=30, what="the rollback to finish")
    except AssertionError:
        steps = Step.objects.filter(rollback=rollback).order_by("pk")
        states = [(s.pk, s.system.slug, s.stage.index, s.state, s.last_error) for s in steps]
        raise AssertionError(f"{_state(rollback)}: {states}") from None


def _assert_in_order_with_one_effect_each(rollback, ctx):
    engine_estate.assert_stages_in_order(rollback)
    effects = [e["path"] for e in ctx["target"].effects]
    assert sorted(effects) == sorted(set(effects)), effects  # no effect twice
    assert PATH in effects
    assert _orders(ctx["db"]) == [99]  # both SQL compensations applied, once


def test_a_redis_restart_mid_rollback_loses_messages_but_no_rollback(services, alice):
    ctx = services
    ctx["target"].delays[PATH] = 3.0  # in flight when Redis dies
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(orders=2), actor=alice, reason="bad migration"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: any(c["path"] == PATH for c in ctx["target"].calls), what="the HTTP call")
    ctx["broker"].kill()  # queued and unacknowledged messages are gone with it
    time.sleep(3.0)  # the call returns and the worker records it while Redis is down
    ctx["broker"].start()
    started = time.monotonic()
    _finish(rollback, alice, ctx)
    restarts = ctx["supervisor"].restarts
    print(
        f"Redis restart: rollback finished {time.monotonic() - started:.1f} s after it; "
        f"the worker was restarted {restarts} time(s) by the supervisor"
    )
    _assert_in_order_with_one_effect_each(rollback, ctx)
    calls = [c for c in ctx["target"].calls if c["path"] == PATH]
    assert len({c["key"] for c in calls}) == 1  # any repeat carried the same key


def test_dropped_database_connections_mid_rollback_lose_nothing(services, alice):
    ctx = services
    ctx["target"].delays[PATH] = 3.0
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(orders=2), actor=alice, reason="bad migration"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: any(c["path"] == PATH for c in ctx["target"].calls), what="the HTTP call")
    from django.db import connection

    connection.ensure_connection()
    mine = connection.connection.info.backend_pid  # this test's own, playing the web side
    with psycopg.connect(_admin_url(), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> %s",
            [connection.settings_dict["NAME"], mine],
        ).fetchone()[0]
    assert killed >= 1, "the worker and beat had no connection to terminate"
    started = time.monotonic()
    _finish(rollback, alice, ctx)
    print(
        f"{killed} connections dropped: rollback finished {time.monotonic() - started:.1f} s after"
    )
    _assert_in_order_with_one_effect_each(rollback, ctx)


def _admin_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/postgres"
