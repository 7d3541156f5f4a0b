"""Recording external events (``POST /api/v1/events``): checked, then stored in one row.

Not ledgered: an event is what another system says happened, not an action on a rollback
(docs/timeline.md). A refusal of the account (no operator or admin role) is ledgered, as
every refusal is (``access.refuse``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from rollbacks import access
from rollbacks.models import ProcessRun, Rollback, System
from timeline.models import Event


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
) -> Event:
    """Store one event. Its system, run and rollback must be ones the account can see; an
    unknown one is a ValidationError naming the field (and the same for one it cannot see,
    so that an answer tells nothing about other teams' objects)."""
    if not access.has_role(actor, *access.OPERATOR_ROLES):
        access.refuse(
            actor=actor,
            action="event.record",
            subject=None,
            subject_type="event",
            why="only an operator or admin account may post events",
        )
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
    return Event.objects.create(
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
    )
