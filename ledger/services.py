"""``record()``: the one way to write to the ledger.

Call it inside the transaction of the change it records, so that the change and its entry
commit together or not at all.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from config.telemetry import current_trace_id
from ledger.models import Entry, Outcome


def actor_label(actor: Any) -> str:
    """'user:alice' for a user, the string itself for a worker or system actor."""
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    username = getattr(actor, "get_username", None)
    return f"user:{username()}" if username else str(actor)


def record(
    *,
    actor: Any,
    action: str,
    subject: Any = None,
    subject_type: str = "",
    subject_id: Any = "",
    rollback_id: int | None = None,
    reason: str = "",
    outcome: str = Outcome.OK,
    payload: dict | None = None,
    trace_id: str = "",
) -> Entry:
    if subject is not None:
        subject_type = subject_type or subject._meta.model_name
        subject_id = subject_id or subject.pk
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("ledger.record() must be called inside the transaction of its change")
    user = actor if getattr(actor, "is_authenticated", False) else None
    return Entry.objects.create(
        at=timezone.now(),
        actor=actor_label(actor),
        actor_user=user,
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        rollback_id=rollback_id,
        reason=reason,
        outcome=outcome,
        trace_id=trace_id or current_trace_id(),
        payload=payload or {},
    )
