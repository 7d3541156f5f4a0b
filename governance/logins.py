"""Failed logins and lockouts in the ledger (SPEC: the ledger records every action).

django-axes counts the failures and locks out (config/settings.py, ``AXES_*``); these
receivers ledger each failure of a login that was not already locked out, and each lockout
once, so that a brute force is visible to auditors but cannot lengthen the ledger without
end: once the username or address is locked out, its further tries are not ledgered.
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_client_ip_address
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.db import transaction
from django.dispatch import receiver

import ledger.services as ledger


def _record(action: str, request: Any, username: str, reason: str) -> None:
    with transaction.atomic():
        ledger.record(
            actor="anonymous",
            action=action,
            subject_type="user",
            subject_id=username[:150],
            reason=reason,
            outcome="refused",
            payload={
                "username": username[:150],
                "address": get_client_ip_address(request) if request is not None else None,
            },
        )


@receiver(user_login_failed, dispatch_uid="ledger-login-failed")
def _login_failed(sender: Any, credentials: dict, request: Any = None, **kwargs: Any) -> None:
    if request is not None and getattr(request, "axes_locked_out", False):
        return  # already locked out: the lockout was ledgered once
    username = str(credentials.get("username") or "")
    _record("auth.login_failed", request, username, "wrong username or password")


@receiver(user_locked_out, dispatch_uid="ledger-locked-out")
def _locked_out(
    sender: Any, request: Any = None, username: str | None = None, **kwargs: Any
) -> None:
    """axes sends this on every try while locked out: ledgered once per username and address
    per cool-off (remembered in the cache, so at most once per process when it is local)."""
    username = str(username or "")
    address = get_client_ip_address(request) if request is not None else None
    keys = [f"unwind:lockout-ledgered:user:{username}", f"unwind:lockout-ledgered:addr:{address}"]
    if any(cache.get(key) for key in keys):
        return
    cache.set_many(dict.fromkeys(keys, True), timeout=settings.AXES_COOLOFF_TIME.total_seconds())
    _record("auth.locked_out", request, username, "too many failed logins")
