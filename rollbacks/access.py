"""Who may see and act on what. Views fetch through these helpers (404 for outsiders);
services call ``require_*`` again, because workers and the API call services too."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404

import ledger.services as ledger
from rollbacks.models import ProcessRun, Rollback

OPERATOR_ROLES = ("operator", "admin")


def has_role(user: Any, *roles: str) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    return user.is_superuser or user.groups.filter(name__in=roles).exists()


def get_rollback_for_user(user: Any, pk: int) -> Rollback:
    rollback = Rollback.objects.visible_to(user).filter(pk=pk).select_related("run").first()
    if rollback is None:
        raise Http404("No such rollback.")
    return rollback


def get_run_for_user(user: Any, pk: int) -> ProcessRun:
    run = ProcessRun.objects.visible_to(user).filter(pk=pk).first()
    if run is None:
        raise Http404("No such process run.")
    return run


def can_operate(user: Any, rollback: Rollback) -> bool:
    if isinstance(user, str):  # the engine itself ("worker", "sweeper")
        return True
    return (
        has_role(user, *OPERATOR_ROLES)
        and Rollback.objects.visible_to(user).filter(pk=rollback.pk).exists()
    )


def can_operate_run(user: Any, run: ProcessRun) -> bool:
    if isinstance(user, str):
        return True
    return (
        has_role(user, *OPERATOR_ROLES)
        and ProcessRun.objects.visible_to(user).filter(pk=run.pk).exists()
    )


def refuse(
    *,
    actor: Any,
    action: str,
    subject: Any,
    why: str,
    rollback_id: int | None = None,
    subject_type: str = "",
) -> None:
    """Record a refused attempt in the ledger (in its own transaction) and raise PermissionDenied."""
    with transaction.atomic():
        ledger.record(
            actor=actor,
            action=action,
            subject=subject,
            subject_type=subject_type,
            rollback_id=rollback_id,
            reason=why,
            outcome="refused",
        )
    raise PermissionDenied(why)
