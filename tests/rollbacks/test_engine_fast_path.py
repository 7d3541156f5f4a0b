"""The engine's fast path with real parts (a Celery worker process, Redis, PostgreSQL): the
worker keeps its database connection between tasks and replaces a broken one, and the next
stage's only step runs in the same worker without a broker hop — with every guarantee of the
slow path kept (docs/engine.md, "The fast path")."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from config.celery import app
from rollbacks import engine
from rollbacks.models import Outbox, Rollback, Step
from tests.rollbacks import engine_estate
from tests.rollbacks.engine_estate import wait_for as _wait

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]
S, R = Step.State, Rollback.State


def _worker_backends() -> set[tuple[int, object]]:
    """(pid, backend_start) of every other connection to the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return set(cursor.fetchall())


def _finished(rollback) -> bool:
    return Rollback.objects.filter(pk=rollback.pk, state=R.SUCCEEDED).exists()


def test_worker_keeps_its_database_connection_between_tasks(worker_process):
    for _ in range(4):
        app.send_task("rollbacks.tasks.sweep")
    first = _wait(_worker_backends, what="the worker's connections")
    for _ in range(4):
        app.send_task("rollbacks.tasks.sweep")
    time.sleep(1.5)
    # Celery's Django fix-up would have closed it after each task; it is still there.
    assert first & _worker_backends()


def test_worker_replaces_a_connection_that_was_killed(worker_process, make_system, alice):
    warm = engine.rollback_plan(
        run=engine_estate.chain_run(make_system, 2, tag="a"), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=warm, actor=alice)
    _wait(lambda: _finished(warm), what="the first rollback")
    killed = _wait(_worker_backends, what="the worker's connections")
    with connection.cursor() as cursor:  # what a PostgreSQL restart does to the worker
        for pid, _ in killed:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    rollback = engine.rollback_plan(
        run=engine_estate.chain_run(make_system, 3, tag="b"), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    # No sweeper runs here: a task failing on the dead connection would leave its step
    # pending for good. The health check reconnects instead.
    _wait(lambda: _finished(rollback), timeout=30, what="the rollback after the kill")
    steps = Step.objects.filter(rollback=rollback)
    assert sorted(steps.values_list("attempts", flat=True)) == [1, 1, 1]
    assert not {pid for pid, _ in killed} & {pid for pid, _ in _worker_backends()}
    _wait(lambda: not Outbox.objects.filter(sent_at__isnull=True).exists(), what="the outbox")
