"""Who may read the ledger: auditors and admins (groups), and superusers.

The ledger imports no other app, so this checks group membership directly rather than
through ``rollbacks.access``. Views answer 404 to everyone else, as for any object they may
not see (STYLE.md).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404

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
    export = Export.objects.filter(pk=pk).first()
    if export is None or not (user.is_superuser or export.created_by_user_id == user.pk):
        raise Http404("No such export.")
    return export


def remember_auditor(sender, request, user, **kwargs) -> None:
    """``user_logged_in`` receiver: keep in the session whether to show the nav link, so
    that base.html costs no query on every page. The views check again on every request."""
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_FLAG] = can_audit(user)
