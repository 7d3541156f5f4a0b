"""The engine's fast path with real parts (a Celery worker process, Redis, PostgreSQL): the
worker keeps its database connection between tasks and replaces a broken one, and the next
stage's only step runs in the same worker without a broker hop — with every guarantee of the
slow path kept (docs/engine.md, "The fast path")."""

from __future__ import annotations

import re
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
    _wait(lambda: not Outbox.objects.filter(sent_at__isnull=True).exists(), what="the outbox")
    time.sleep(0.5)  # the worker is between tasks: what it holds is an idle connection
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


# The fast path: the next stage's step runs in the same worker ---------------------------


def test_a_chain_runs_on_one_message_without_broker_hops(worker_process, make_system, alice):
    rollback = engine.rollback_plan(
        run=engine_estate.chain_run(make_system, 5), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: _finished(rollback), what="the rollback")
    steps = Step.objects.filter(rollback=rollback).order_by("stage__index")
    assert list(steps.values_list("attempts", flat=True)) == [1, 1, 1, 1, 1]
    started = [s.attempt_set.get().started_at for s in steps]
    finished = [s.finished_at for s in steps]
    assert all(f <= n for f, n in zip(finished, started[1:], strict=False))  # stage order
    # Every step had its outbox row, and every row was either published or claimed.
    rows = Outbox.objects.filter(task=engine.RUN_STEP)
    assert sorted(r.kwargs["step_id"] for r in rows) == sorted(s.pk for s in steps)
    _wait(lambda: not rows.filter(sent_at__isnull=True).exists(), what="the outbox")
    time.sleep(0.5)
    log = worker_process.log_path.read_text()
    assert len(re.findall(r"rollbacks\.tasks\.run_step\[[-0-9a-f]+\] received", log)) == 1


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """The step ids of the run_step messages published (instead of the broker)."""
    published: list[int] = []

    def send_task(name, kwargs=None, countdown=None):
        if name == engine.RUN_STEP:
            published.append(kwargs["step_id"])

    monkeypatch.setattr(app, "send_task", send_task)
    return published


def _started_chain(make_system, alice, n: int):
    rollback = engine.rollback_plan(
        run=engine_estate.chain_run(make_system, n), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    return rollback, list(Step.objects.filter(rollback=rollback).order_by("stage__index"))


def _claims(monkeypatch, before_second):
    """Patch the engine's claim: ``before_second()`` runs before the second claim."""
    real, calls = engine.worker.claim, []

    def claim(step_id, worker, outbox_id=None):
        calls.append(step_id)
        if len(calls) == 2:
            before_second()
        return real(step_id, worker, outbox_id)

    monkeypatch.setattr(engine.worker, "claim", claim)
    return calls


def test_fast_path_runs_the_chain_inline_and_marks_the_rows_sent(
    transactional_db, make_system, alice, sent, settings
):
    settings.ENGINE_INLINE_STEPS = 20
    rollback, steps = _started_chain(make_system, alice, 4)
    assert sent == [steps[0].pk]
    assert engine.step_run(step_id=steps[0].pk, worker="w") == "succeeded"
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    assert sent == [steps[0].pk]  # the later steps never went through the broker
    assert not Outbox.objects.filter(sent_at__isnull=True).exists()
    assert [s.attempt_set.get().outcome for s in steps] == ["succeeded"] * 4
    for step in steps[1:]:  # marked sent by the claim that took it, in the same transaction
        row = Outbox.objects.get(kwargs__step_id=step.pk)
        assert row.sent_at == step.attempt_set.get().started_at


def test_fast_path_stops_after_its_budget_and_publishes_the_next_step(
    transactional_db, make_system, alice, sent, settings
):
    settings.ENGINE_INLINE_STEPS = 1
    rollback, steps = _started_chain(make_system, alice, 3)
    engine.step_run(step_id=steps[0].pk, worker="w")
    states = [Step.objects.get(pk=s.pk).state for s in steps]
    assert states == [S.SUCCEEDED, S.SUCCEEDED, S.PENDING]
    assert sent == [steps[0].pk, steps[2].pk]


def test_fast_path_claims_nothing_once_paused_and_publishes_the_row(
    transactional_db, make_system, alice, sent, settings, monkeypatch
):
    settings.ENGINE_INLINE_STEPS = 20
    rollback, steps = _started_chain(make_system, alice, 3)
    _claims(monkeypatch, lambda: engine.rollback_pause(rollback=rollback, actor=alice))
    assert engine.step_run(step_id=steps[0].pk, worker="w") == "succeeded"
    second = Step.objects.get(pk=steps[1].pk)
    assert second.state == S.PENDING and second.attempts == 0
    assert sent == [steps[0].pk, steps[1].pk]  # not taken here: published for any worker
    assert not Outbox.objects.filter(sent_at__isnull=True).exists()


def test_fast_path_worker_dying_before_the_inline_claim_leaves_the_row_to_the_sweeper(
    transactional_db, make_system, alice, sent, settings, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from rollbacks import outbox

    settings.ENGINE_INLINE_STEPS = 20
    rollback, steps = _started_chain(make_system, alice, 3)

    def die():
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        _claims(m, die)
        m.setattr(outbox, "publish", lambda ids: 0)  # a dead worker publishes nothing
        with pytest.raises(SystemExit):
            engine.step_run(step_id=steps[0].pk, worker="w")
    second = Step.objects.get(pk=steps[1].pk)
    assert second.state == S.PENDING and second.dispatched_at is not None
    row = Outbox.objects.get(kwargs__step_id=second.pk)
    assert row.sent_at is None and sent == [steps[0].pk]
    Outbox.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(seconds=10))
    assert engine.sweep()["published"] == 1
    assert sent == [steps[0].pk, steps[1].pk]
    engine.step_run(step_id=second.pk, worker="w2")  # the message's worker goes on inline
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    assert [Step.objects.get(pk=s.pk).attempts for s in steps] == [1, 1, 1]


def test_a_failure_after_the_record_committed_does_not_record_the_attempt_again(
    transactional_db, make_system, alice, sent, settings, monkeypatch
):
    from ledger.models import Entry
    from rollbacks import outbox

    settings.ENGINE_INLINE_STEPS = 0

    def lost_mark(ids):
        raise RuntimeError("the database went away after the commit")

    rollback, steps = _started_chain(make_system, alice, 2)
    monkeypatch.setattr(outbox, "_mark_sent_after_publish", lost_mark)
    assert engine.step_run(step_id=steps[0].pk, worker="w") == "succeeded"
    assert steps[0].attempt_set.get().outcome == "succeeded"
    assert not Entry.objects.filter(rollback_id=rollback.pk, action="step.attempt.refused")
    assert sent == [steps[0].pk, steps[1].pk]  # published; the sweeper may publish it again
    assert Outbox.objects.get(kwargs__step_id=steps[1].pk).sent_at is None
