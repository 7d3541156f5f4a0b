"""Bounded tables: beat prunes the rows that only grow and that nothing needs any more.

``prune_tables`` (beat, every ``PRUNE_INTERVAL_S``) deletes:

- **sent outbox rows** older than ``OUTBOX_RETENTION_S`` (``outbox.prune``). Unsent rows are
  work still to publish and are never pruned;
- **expired sessions** (Django's ``clear_expired``, as ``manage.py clearsessions`` does).

Each table is pruned in batches of ``BATCH`` rows, one short transaction per batch, so a
large backlog (the first run after an upgrade, say) never holds a long transaction or a
long lock; one run stops after ``MAX_BATCHES`` batches and the next run goes on. Health
checks are pruned the same way by their own beat task (``health.prune_history``). What
bounds every other table, and why the ledger is never pruned: docs/engine.md, "Bounded
tables".

The worker finds this module through ``CELERY_IMPORTS`` (config/settings.py):
``autodiscover_tasks`` imports only each app's ``tasks`` module.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.db.models import QuerySet

BATCH = 5000
MAX_BATCHES = 200  # per table and run: at most 1,000,000 rows, the rest the next time


def delete_in_batches(rows: QuerySet, *, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> int:
    """Delete the rows of ``rows`` ``batch`` at a time, each batch in its own transaction
    (autocommit), until none is left or ``max_batches`` ran; the number deleted."""
    model = rows.model
    deleted = 0
    for _ in range(max_batches):
        ids = list(rows.order_by().values_list("pk", flat=True)[:batch])
        if not ids:
            break
        _, by_model = model.objects.filter(pk__in=ids).delete()
        deleted += by_model.get(model._meta.label, 0)
        if len(ids) < batch:
            break
    return deleted


def prune_sessions() -> int:
    """Expired sessions; with a database session engine, in batches. Another engine's own
    ``clear_expired`` runs instead (the cache engines expire their keys by themselves)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore as DbStore
    from django.utils import timezone

    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not issubclass(store, DbStore):
        store.clear_expired()
        return 0
    return delete_in_batches(store.get_model_class().objects.filter(expire_date__lt=timezone.now()))


@shared_task(ignore_result=True, max_retries=0)
def prune_tables() -> dict[str, int]:
    """Beat: prune the outbox and the sessions; how many rows went from each."""
    from django.conf import settings

    from rollbacks import outbox

    return {
        "outbox": outbox.prune(timedelta(seconds=settings.OUTBOX_RETENTION_S)),
        "sessions": prune_sessions(),
    }
