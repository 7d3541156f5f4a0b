"""Recording external events (``POST /api/v1/events``): checked, then stored in one row.

Not ledgered: an event is what another system says happened, not an action on a rollback
(docs/timeline.md). A refusal of the account (no operator or admin role) is ledgered, as
every refusal is (``access.refuse``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from rollbacks import access
from rollbacks.models import ProcessRun, Rollback, System
from timeline.models import Event

IDEMPOTENCY_HEADER = "Idempotency-Key"


class IdempotencyKeyReused(Exception):
    """The account used this Idempotency-Key for another event (different fields)."""

    def __init__(self, key: str, event: Event) -> None:
        self.key, self.event = key, event
        super().__init__(
            f"{IDEMPOTENCY_HEADER} {key!r} was already used for event #{event.pk}, "
            "with different fields"
        )


def _request_sha256(fields: dict[str, Any]) -> str:
    """Of the posted fields, as sent (``occurred_at`` before it defaults to now)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _repeat(actor: Any, key: str, digest: str) -> Event | None:
    """The event this account already stored under ``key`` when the fields are the same;
    IdempotencyKeyReused when they differ; None when the key is new."""
    event = Event.objects.filter(created_by=actor, idempotency_key=key).first()
    if event is not None and event.request_sha256 != digest:
        raise IdempotencyKeyReused(key, event)
    return event


def event_record(
    *,
    actor: Any,
    kind: str,
    source: str,
    title: str,
    system: str | None = None,
    occurred_at: datetime | None = None,
    trace_id: str = "",
    run: int | None = None,
    rollback: int | None = None,
    payload: dict | None = None,
    idempotency_key: str = "",
) -> tuple[Event, bool]:
    """Store one event; ``(event, created)``. Its system, run and rollback must be ones the
    account can see; an unknown one is a ValidationError naming the field (and the same for
    one it cannot see, so that an answer tells nothing about other teams' objects).

    With an ``idempotency_key`` (the account's own, from the Idempotency-Key header):
    1. the account's event under that key, if it has one, is returned (``created`` False)
       when the fields are the same, and IdempotencyKeyReused is raised when they differ;
    2. else the event is stored with the key; two requests racing with the same key meet
       at the unique constraint, and the loser answers as in 1.
    """
    if not access.has_role(actor, *access.OPERATOR_ROLES):
        access.refuse(
            actor=actor,
            action="event.record",
            subject=None,
            subject_type="event",
            why="only an operator or admin account may post events",
        )
    fields = {
        "kind": kind,
        "source": source,
        "title": title,
        "system": system,
        "occurred_at": occurred_at.isoformat() if occurred_at else None,
        "trace_id": trace_id,
        "run": run,
        "rollback": rollback,
        "payload": payload or {},
    }
    digest = _request_sha256(fields) if idempotency_key else ""
    if idempotency_key:
        earlier = _repeat(actor, idempotency_key, digest)
        if earlier is not None:
            return earlier, False
    errors: dict[str, list[str]] = {}
    system_obj = the_run = the_rollback = None
    if system:
        system_obj = System.objects.visible_to(actor).filter(slug=system).first()
        if system_obj is None:
            errors["system"] = [f"unknown system {system!r}"]
    if run is not None:
        the_run = ProcessRun.objects.visible_to(actor).filter(pk=run).first()
        if the_run is None:
            errors["run"] = [f"no process run #{run} that this account can see"]
    if rollback is not None:
        the_rollback = Rollback.objects.visible_to(actor).filter(pk=rollback).first()
        if the_rollback is None:
            errors["rollback"] = [f"no rollback #{rollback} that this account can see"]
        elif the_run is not None and the_rollback.run_id != the_run.pk:
            errors["rollback"] = [f"rollback #{rollback} is not a rollback of run #{run}"]
    if occurred_at is not None and timezone.is_naive(occurred_at):
        errors["occurred_at"] = ["give a time zone (e.g. 2024-05-01T12:00:00Z)"]
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    try:
        with transaction.atomic():  # a savepoint: the race's loser reads the winner's row
            event = Event.objects.create(
                kind=kind,
                source=source,
                title=title,
                system=system_obj,
                occurred_at=occurred_at or now,
                received_at=now,
                trace_id=trace_id,
                run=the_run or (the_rollback.run if the_rollback else None),
                rollback=the_rollback,
                payload=payload or {},
                created_by=actor if getattr(actor, "is_authenticated", False) else None,
                idempotency_key=idempotency_key,
                request_sha256=digest,
            )
    except IntegrityError:
        earlier = _repeat(actor, idempotency_key, digest) if idempotency_key else None
        if earlier is None:
            raise
        return earlier, False
    return event, True
