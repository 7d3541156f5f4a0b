"""Bounded tables: beat's prune task deletes sent outbox rows past their retention and expired
sessions, in batches, and a real worker finds the task (rollbacks/maintenance.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollbacks import maintenance
from rollbacks.models import Outbox
from tests.test_settings import _django


def _row(*, sent_ago: timedelta | None, due_in: timedelta = timedelta(0)) -> Outbox:
    now = timezone.now()
    row = Outbox.objects.create(task="rollbacks.tasks.run_step", kwargs={}, available_at=now)
    Outbox.objects.filter(pk=row.pk).update(
        sent_at=None if sent_ago is None else now - sent_ago,
        available_at=(now - sent_ago if sent_ago else now) + due_in,
    )
    return row


@pytest.mark.django_db
def test_sent_outbox_rows_past_the_retention_go_newer_and_unsent_ones_stay(settings):
    settings.OUTBOX_RETENTION_S = 3600
    old = [_row(sent_ago=timedelta(hours=2)), _row(sent_ago=timedelta(days=3))]
    recent = _row(sent_ago=timedelta(minutes=50))
    unsent = _row(sent_ago=None)
    # Sent long ago with a countdown that is not due yet (a far retry): its message waits.
    waiting = _row(sent_ago=timedelta(hours=2), due_in=timedelta(hours=1, minutes=30))
    result = maintenance.prune_tables()
    assert result["outbox"] == 2
    assert set(Outbox.objects.values_list("pk", flat=True)) == {recent.pk, unsent.pk, waiting.pk}
    assert not Outbox.objects.filter(pk__in=[r.pk for r in old]).exists()


@pytest.mark.django_db
def test_a_backlog_goes_in_batches_and_a_run_stops_after_its_batches():
    for _ in range(7):
        _row(sent_ago=timedelta(days=2))
    rows = Outbox.objects.filter(sent_at__isnull=False)
    with CaptureQueriesContext(connection) as queries:
        assert maintenance.delete_in_batches(rows, batch=3, max_batches=2) == 6
    deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 2  # one statement of at most 3 rows each, not one of 7
    assert Outbox.objects.count() == 1
    assert maintenance.delete_in_batches(rows, batch=3) == 1  # the next run finishes
    assert Outbox.objects.count() == 0


@pytest.mark.django_db
def test_expired_sessions_go_live_ones_stay():
    live, expired = SessionStore(), SessionStore()
    live.create()
    expired.create()
    Session.objects.filter(session_key=expired.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert maintenance.prune_tables()["sessions"] == 1
    assert list(Session.objects.values_list("session_key", flat=True)) == [live.session_key]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("60", "OUTBOX_RETENTION_S=60 is below its minimum of 600"),
        ("a day", "OUTBOX_RETENTION_S='a day' is not a whole number"),
    ],
)
def test_a_bad_outbox_retention_fails_loudly(value, message):
    result = _django({"DEBUG": "1", "OUTBOX_RETENTION_S": value}, "check")
    assert result.returncode != 0 and message in result.stderr


def test_beat_runs_the_prune_task_on_its_interval(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["prune-tables"]
    assert entry == {"task": "rollbacks.maintenance.prune_tables", "schedule": 600.0}


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(90)
def test_a_real_worker_finds_the_prune_task_and_runs_it(worker_process):
    from config.celery import app

    old = _row(sent_ago=timedelta(days=2))
    recent = _row(sent_ago=timedelta(seconds=5))
    app.send_task("rollbacks.maintenance.prune_tables")
    deadline = time.monotonic() + 30
    while Outbox.objects.filter(pk=old.pk).exists():
        assert time.monotonic() < deadline, worker_process.log_path.read_text()[-3000:]
        time.sleep(0.2)
    assert Outbox.objects.filter(pk=recent.pk).exists()
