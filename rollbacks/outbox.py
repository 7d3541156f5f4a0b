"""A transactional outbox: tasks are written in the transaction that needs them and
published after it commits.

``enqueue_many()`` writes the rows of one dispatch in one INSERT and registers one on-commit
hook that publishes them from memory and marks them sent with one UPDATE. If the process
dies between the commit and the publish, the rows stay unsent and the sweeper publishes
them (``publish_due``). Publishing twice is harmless: a message only nudges the worker,
which re-reads the database and claims with a conditional update.

``holding()`` lets a worker keep the rows of a task that are due at once instead of
publishing them, to run that work itself (the engine's fast path, docs/engine.md). A held row
is still a committed, unsent row: the worker marks it sent in the transaction that claims
the work, publishes it when it does not take it, and the sweeper publishes it if the worker
dies first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from rollbacks.models import Outbox

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(seconds=2)  # an unsent row older than this was orphaned by a crash

# (task, list): rows of that task due at once go to the list when their transaction commits.
_held: ContextVar[tuple[str, list[Outbox]] | None] = ContextVar("outbox_held", default=None)
# task -> (its batch task, the kwarg each row names, the batch task's list kwarg): rows of
# that task due together go out as one message of the batch task (``batched``).
_batches: dict[str, tuple[str, str, str]] = {}


def batched(task: str, *, as_task: str, key: str, many: str) -> None:
    """Rows of ``task`` sent together and due at the same moment go out as one message,
    ``as_task(many=[each row's kwargs[key]])``; a single row goes out as itself. The rows
    stay one per item, each marked sent (or published again by the sweeper) on its own."""
    _batches[task] = (as_task, key, many)


def enqueue(task: str, *, at: datetime | None = None, **kwargs) -> Outbox:
    (row,) = enqueue_many(task, [(kwargs, at)])
    return row


def enqueue_many(task: str, items: list[tuple[dict, datetime | None]]) -> list[Outbox]:
    """One row per ``(kwargs, at)``, written in one INSERT, published together on commit."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox.enqueue() belongs inside the transaction that needs the task")
    now = timezone.now()
    rows = Outbox.objects.bulk_create(
        [Outbox(task=task, kwargs=kwargs, available_at=at or now) for kwargs, at in items]
    )
    to_send = rows
    hold = _held.get()
    if hold is not None and hold[0] == task:
        due = [row for row in rows if row.available_at <= now]
        to_send = [row for row in rows if row.available_at > now]
        if due:
            transaction.on_commit(lambda: hold[1].extend(due))
    if to_send:
        transaction.on_commit(lambda: send(to_send))
    return rows


@contextmanager
def holding(task: str, into: list[Outbox]) -> Iterator[list[Outbox]]:
    """Within the block, rows of ``task`` due at once are not published when their
    transaction commits: they are appended to ``into`` (only once committed). The caller
    runs them itself, marking each row sent in the transaction that claims its work
    (``mark_sent``), or publishes them (``send``)."""
    token = _held.set((task, into))
    try:
        yield into
    finally:
        _held.reset(token)


def send(rows: list[Outbox]) -> int:
    """Send these rows (as written, no re-read) to the broker, then mark the ones that went
    as sent in one UPDATE; returns how many were sent."""
    from config.celery import app

    sent = []
    now = timezone.now()
    groups: dict[tuple[str, datetime], list[Outbox]] = {}
    for row in rows:
        groups.setdefault((row.task, row.available_at), []).append(row)
    for (task, available_at), group in groups.items():
        countdown = max(0.0, (available_at - now).total_seconds())
        if task in _batches and len(group) > 1:
            as_task, key, many = _batches[task]
            messages = [(as_task, {many: [row.kwargs[key] for row in group]}, group)]
        else:
            messages = [(task, row.kwargs, [row]) for row in group]
        for name, kwargs, covered in messages:
            try:
                app.send_task(name, kwargs=kwargs, countdown=countdown or None)
            except Exception:  # broker down: the sweeper will try again
                log.exception("outbox: could not publish %s", covered[0])
                continue
            sent.extend(row.pk for row in covered)
    if sent:
        try:
            _mark_sent_after_publish(sent)
        except Exception:  # the messages went; the sweeper publishes the rows again (harmless)
            log.exception("outbox: published %s but could not mark them sent", sent)
    return len(sent)


def mark_sent(ids: list[int], *, at: datetime | None = None) -> int:
    """Mark rows sent inside the caller's transaction (a worker that claimed their work)."""
    return Outbox.objects.filter(pk__in=ids, sent_at__isnull=True).update(
        sent_at=at or timezone.now()
    )


def _mark_sent_after_publish(ids: list[int]) -> None:
    connection = transaction.get_connection()
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        mark_sent(ids)
        return
    # A transaction of its own that does not wait for its WAL flush (a third one per step
    # otherwise): losing this mark in a PostgreSQL crash only makes the sweeper publish the
    # rows again, and a duplicate message is harmless by design. ``set_config(…, true)``
    # lasts until this statement's own transaction ends.
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH quick AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) "
            f"UPDATE {Outbox._meta.db_table} SET sent_at = %s "
            "WHERE id = ANY(%s) AND sent_at IS NULL AND EXISTS (SELECT 1 FROM quick)",
            [timezone.now(), ids],
        )


def publish(ids: list[int]) -> int:
    """Send the given rows that are still unsent; returns how many were sent."""
    return send(list(Outbox.objects.filter(pk__in=ids, sent_at__isnull=True))) if ids else 0


def publish_due() -> int:
    """Publish rows that should have gone out already (orphaned by a crash or a broker outage)."""
    cutoff = timezone.now() - STALE_AFTER
    ids = list(
        Outbox.objects.filter(sent_at__isnull=True, created_at__lte=cutoff).values_list(
            "pk", flat=True
        )[:1000]
    )
    return publish(ids)


def prune(older_than: timedelta = timedelta(days=1)) -> int:
    """Delete rows sent (and due) longer ago than ``older_than``, in batches (beat:
    ``rollbacks.maintenance.prune_tables``); unsent rows stay. The number deleted."""
    from rollbacks.maintenance import delete_in_batches

    cutoff = timezone.now() - older_than
    return delete_in_batches(Outbox.objects.filter(sent_at__lte=cutoff, available_at__lte=cutoff))
