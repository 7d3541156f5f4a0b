"""Who may read the ledger: auditors and admins (groups), and superusers.

The ledger imports no other app, so this checks group membership directly rather than
through ``rollbacks.access``. Views answer 404 to everyone else, as for any object they may
not see (STYLE.md). An export is fetched again by whoever holds ``view_export`` on it: a
django-guardian object permission its creator is given (``exports.export_create``), and
the auditor or admin role as well.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404
from guardian.shortcuts import get_objects_for_user

from ledger.models import Export

AUDIT_ROLES = ("auditor", "admin")
SESSION_FLAG = "ledger_can_audit"


def can_audit(user: Any) -> bool:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return user.is_superuser or user.groups.filter(name__in=AUDIT_ROLES).exists()


def require_auditor(user: Any) -> None:
    if not can_audit(user):
        raise Http404("No such page.")


def get_export_for_user(user: Any, pk) -> Export:
    """An export its creator (or a superuser) may fetch again; 404 for anyone else."""
    require_auditor(user)
    # Object permissions only (a model-wide "can view export" opens none); superusers all.
    mine = get_objects_for_user(user, "ledger.view_export", Export, accept_global_perms=False)
    export = mine.filter(pk=pk).first()
    if export is None:
        raise Http404("No such export.")
    return export


def remember_auditor(sender, request, user, **kwargs) -> None:
    """``user_logged_in`` receiver: keep in the session whether to show the nav link, so
    that base.html costs no query on every page. The views check again on every request."""
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_FLAG] = can_audit(user)
