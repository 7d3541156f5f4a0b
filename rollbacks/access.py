"""Who may see and act on what. Views fetch through these helpers (404 for outsiders);
services check again, because workers and the API call services too.

Acting needs both a role (the auth groups operator, approver, admin) and the guardian object
permission its team holds on the object (``rollbacks/permissions.py``, SPEC invariant 6).
Auditors hold no acting role: they read everything and change nothing."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404

import ledger.services as ledger
from rollbacks.models import ProcessRun, Rollback, System
from rollbacks.permissions import permitted

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


def holds(user: Any, perm: str, obj: Rollback | ProcessRun | System) -> bool:
    """The object permission ``perm`` on ``obj``, on an object the user may see. One query."""
    model = type(obj)
    return permitted(user, perm, model.objects.visible_to(user).filter(pk=obj.pk)).exists()


def can_operate(user: Any, rollback: Rollback) -> bool:
    """The operator (or admin) role and ``operate_rollback`` on the rollback."""
    if isinstance(user, str):  # the engine itself ("worker", "sweeper")
        return True
    return has_role(user, *OPERATOR_ROLES) and holds(user, "operate_rollback", rollback)


def require_operator(
    actor: Any,
    rollback: Rollback,
    action: str,
    *,
    why: str = "only an operator of the rollback's teams may do this",
) -> None:
    """Refuse (ledgered as ``action``, PermissionDenied) unless ``actor`` may operate the
    rollback (``can_operate``). Views call it before reading the form, so that an auditor
    learns nothing more; services call it again for the API and the workers."""
    if not can_operate(actor, rollback):
        refuse(actor=actor, action=action, subject=rollback, rollback_id=rollback.pk, why=why)


def can_operate_run(user: Any, run: ProcessRun) -> bool:
    """The operator (or admin) role and ``operate_processrun`` on the run."""
    if isinstance(user, str):
        return True
    return has_role(user, *OPERATOR_ROLES) and holds(user, "operate_processrun", run)


def operate_refusal(user: Any, systems: list[System]) -> str:
    """Why ``user`` may not operate on these systems now ('' when they may): the role and
    ``operate_system`` on each. The workers ask it again before every step."""
    if user is None:
        return "nobody started it"
    if not user.is_active:
        return f"{user.get_username()}'s account is deactivated"
    if not has_role(user, *OPERATOR_ROLES):
        return f"{user.get_username()} no longer holds the operator role"
    ids = {s.pk for s in systems}
    allowed = set(
        permitted(user, "operate_system", System.objects.filter(pk__in=ids)).values_list(
            "pk", flat=True
        )
    )
    missing = sorted(s.slug for s in systems if s.pk not in allowed)
    if missing:
        return f"{user.get_username()} may no longer operate on {', '.join(missing)}"
    return ""


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
