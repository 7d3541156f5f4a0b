"""A transactional outbox: tasks are written in the transaction that needs them and
published after it commits.

``enqueue()`` writes an ``Outbox`` row and registers an on-commit hook that publishes it at
once. If the process dies between the commit and the publish, the row stays unsent and the
sweeper publishes it (``publish_due``). Publishing twice is harmless: a message only nudges
the worker, which re-reads the database and claims with a conditional update.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from rollbacks.models import Outbox

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(seconds=2)  # an unsent row older than this was orphaned by a crash


def enqueue(task: str, *, at: datetime | None = None, **kwargs) -> Outbox:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox.enqueue() belongs inside the transaction that needs the task")
    row = Outbox.objects.create(task=task, kwargs=kwargs, available_at=at or timezone.now())
    transaction.on_commit(lambda: publish([row.pk]))
    return row


def publish(ids: list[int]) -> int:
    """Send the given unsent rows to the broker; returns how many were sent."""
    from config.celery import app

    sent = 0
    now = timezone.now()
    for row in Outbox.objects.filter(pk__in=ids, sent_at__isnull=True):
        countdown = max(0.0, (row.available_at - now).total_seconds())
        try:
            app.send_task(row.task, kwargs=row.kwargs, countdown=countdown or None)
        except Exception:  # broker down: the sweeper will try again
            log.exception("outbox: could not publish %s", row)
            continue
        Outbox.objects.filter(pk=row.pk, sent_at__isnull=True).update(sent_at=timezone.now())
        sent += 1
    return sent


def publish_due() -> int:
    """Publish rows that should have gone out already (orphaned by a crash or a broker outage)."""
    cutoff = timezone.now() - STALE_AFTER
    ids = list(
        Outbox.objects.filter(sent_at__isnull=True, created_at__lte=cutoff).values_list(
            "pk", flat=True
        )[:1000]
    )
    return publish(ids) if ids else 0


def prune(older_than: timedelta = timedelta(days=1)) -> int:
    deleted, _ = Outbox.objects.filter(sent_at__lte=timezone.now() - older_than).delete()
    return deleted
