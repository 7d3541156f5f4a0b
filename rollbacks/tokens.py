"""API tokens of service accounts: create, authenticate, revoke.

A service account is an ordinary Django user with a role group and team groups, like a
person. Only the SHA-256 of a token is stored, with its first characters to recognise it;
the token itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

import ledger.services as ledger
from rollbacks.models import ApiToken

TOKEN_PREFIX = "unw_"
PREFIX_LENGTH = 8
MAX_TOKEN_LENGTH = 200  # a longer "token" is not one of ours: refuse it without hashing
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_create(*, user: Any, name: str, actor: Any = None) -> tuple[ApiToken, str]:
    """(token row, raw token). The raw token is returned once and never stored.

    ``actor`` is who creates it (an admin, a command); the account itself by default.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "give the token a name, e.g. the process that uses it"})
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, prefix=raw[:PREFIX_LENGTH], token_sha256=token_digest(raw)
        )
        ledger.record(
            actor=actor if actor is not None else user,
            action="token.created",
            subject=token,
            payload={"user": user.get_username(), "name": name, "prefix": token.prefix},
        )
    return token, raw


def token_authenticate(raw: str | None) -> Any | None:
    """The active user a live token belongs to, or None.

    The lookup is by the SHA-256 of what was presented, so response timing depends on a
    hash of the secret, not on how many of its characters match a stored one.
    """
    if not raw or len(raw) > MAX_TOKEN_LENGTH:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_sha256=token_digest(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # At most one write a minute per token, however busy it is; the condition keeps
        # concurrent requests from all writing it.
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
    return token.user


def token_revoke(*, token: ApiToken, actor: Any) -> bool:
    """Revoke a token; True if this call revoked it, False if it already was."""
    now = timezone.now()
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if revoked:
            ledger.record(
                actor=actor,
                action="token.revoked",
                subject=token,
                payload={"user": token.user.get_username(), "name": token.name},
            )
    token.refresh_from_db(fields=["revoked_at"])
    return bool(revoked)
