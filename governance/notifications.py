"""Escalation: tell people when a rollback needs them, by email and by a JSON webhook.

``escalate()`` runs every ``ESCALATION_INTERVAL_S`` (beat, ``governance.tasks.escalate``)
and finds:

- approvals pending past ``APPROVAL_DEADLINE_S`` (counted from when the rollback last
  started waiting: planned, or an approval lapsed);
- steps waiting for a human (a manual step, or a failed one) in a running or paused rollback;
- rollbacks that ended ``failed`` (in the last ``ESCALATION_LOOKBACK_S``).

Each (kind, rollback, subject) is sent once per channel: the ``notify_once`` constraint on
``Notification`` is the memory. A channel claims a row with a conditional UPDATE before it
sends (zero rows: another run has it) and records the result with its ledger entry; a
failure leaves the row unsent, so the next run retries it, for up to ``RETRY_FOR``.
"""

from __future__ import annotations

import logging
import random
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

import ledger.services as ledger
from governance.models import Notification
from rollbacks import outcome
from rollbacks.models import Rollback, Step

log = logging.getLogger(__name__)

ACTOR = "escalation"
EMAIL, WEBHOOK = "email", "webhook"
SENDING = "sending"  # the claim marker in ``error`` while ``sent_at`` holds the claim time
CLAIM_TTL = timedelta(seconds=60)  # a claim older than this belonged to a sender that died
RETRY_FOR = timedelta(days=1)  # a notification still failing after this is given up
RECIPIENT_ROLES = ("operator", "approver")
Kind = Notification.Kind


class TransportError(Exception):
    """A channel could not deliver; the notification stays unsent and is retried."""


@dataclass
class Escalation:
    kind: str
    rollback: Rollback
    subject_key: str  # what it is about, stable across runs: sent once per key
    subject: str  # the same in words


# What needs escalating ----------------------------------------------------------------------


def _deadline() -> timedelta:
    return timedelta(seconds=getattr(settings, "APPROVAL_DEADLINE_S", 900))


def _waiting_since(rollback: Rollback) -> tuple[datetime, str]:
    """When the rollback last started waiting for approval, and a key naming that wait (so a
    second wait, after an approval lapsed, is escalated again)."""
    from ledger.models import Entry

    entry = (
        Entry.objects.filter(
            rollback_id=rollback.pk,
            action__in=("rollback.submitted", "rollback.approval_lapsed"),
        )
        .order_by("-at", "-pk")
        .values_list("pk", "at")
        .first()
    )
    if entry is None:
        return rollback.created_at, "approval"
    return entry[1], f"approval:{entry[0]}"


def due(now: datetime | None = None) -> list[Escalation]:
    """Everything that should have been escalated by ``now``."""
    from governance.gate import requirements
    from governance.services import approval_shortfall

    now = now or timezone.now()
    found = []
    for rollback in Rollback.objects.filter(state=Rollback.State.AWAITING_APPROVAL).order_by("pk"):
        since, key = _waiting_since(rollback)
        waited = now - since
        if waited <= _deadline():
            continue
        missing = approval_shortfall(rollback, requirements(rollback)) or "approvals"
        found.append(
            Escalation(
                Kind.APPROVAL_OVERDUE,
                rollback,
                key,
                f"rollback #{rollback.pk} has awaited approval for {int(waited.total_seconds() // 60)} min "
                f"(deadline {int(_deadline().total_seconds() // 60)} min); still missing: {missing}",
            )
        )
    steps = (
        Step.objects.filter(
            state__in=Step.NEEDS_HUMAN,
            rollback__state__in=(Rollback.State.RUNNING, Rollback.State.PAUSED),
        )
        .select_related("rollback", "system", "forward_action")
        .order_by("rollback_id", "pk")
    )
    for step in steps:
        why = step.last_error or step.manual_reason or "a manual step"
        found.append(
            Escalation(
                Kind.STEP_NEEDS_HUMAN,
                step.rollback,
                # A step that fails again after a retry is a new occasion to escalate.
                f"step:{step.pk}:{step.state}:{step.attempts}",
                f"step #{step.pk} ({step.forward_action.action_type} on {step.system.slug}) is "
                f"{step.get_state_display()}: {why}",
            )
        )
    lookback = timedelta(seconds=getattr(settings, "ESCALATION_LOOKBACK_S", 86400))
    for rollback in Rollback.objects.filter(
        state=Rollback.State.FAILED, finished_at__gte=now - lookback
    ).order_by("pk"):
        found.append(
            Escalation(
                Kind.ROLLBACK_FAILED,
                rollback,
                "rollback",
                f"rollback #{rollback.pk} failed: {outcome.in_words(rollback) or rollback.reason}",
            )
        )
    return found


# Channels ------------------------------------------------------------------------------------


def rollback_url(rollback: Rollback) -> str:
    base = getattr(settings, "UNWIND_BASE_URL", "").rstrip("/")
    return base + reverse("rollback", args=[rollback.pk])


def email_recipients(rollback: Rollback) -> list[str]:
    """ESCALATION_EMAILS, and the members of the rollback's teams who hold the operator or
    approver role (active, with an email address)."""
    team_groups = rollback.steps.values_list("system__team__group", flat=True).distinct()
    members = (
        get_user_model()
        .objects.filter(is_active=True, groups__in=team_groups)
        .filter(groups__name__in=RECIPIENT_ROLES)
        .exclude(email="")
        .values_list("email", flat=True)
        .distinct()
    )
    return sorted(set(getattr(settings, "ESCALATION_EMAILS", [])) | set(members))


def _title(esc: Escalation) -> str:
    drill = " [drill]" if esc.rollback.is_drill else ""
    return f"[Unwind]{drill} {Kind(esc.kind).label}: rollback #{esc.rollback.pk}"


def webhook_body(esc: Escalation, note: Notification) -> dict[str, Any]:
    rollback = esc.rollback
    return {
        "kind": esc.kind,
        "title": _title(esc),
        "subject": esc.subject,
        "subject_key": esc.subject_key,
        "rollback": {
            "id": rollback.pk,
            "url": rollback_url(rollback),
            "state": rollback.state,
            "reason": rollback.reason,
            "is_drill": rollback.is_drill,
            "run": rollback.run_id,
        },
        "trace_id": rollback.trace_id,
        "notification": note.pk,
    }


def send_email(esc: Escalation, note: Notification) -> dict:
    recipients = email_recipients(esc.rollback)
    rollback = esc.rollback
    body = (
        f"{esc.subject}\n\n"
        f"Rollback #{rollback.pk} ({rollback.get_state_display()}"
        f"{', a drill' if rollback.is_drill else ''}): {rollback.reason}\n"
        f"{rollback_url(rollback)}\n\n"
        f"Trace id: {rollback.trace_id or '-'}\n"
        f"Sent once by Unwind's escalation (notification #{note.pk}).\n"
    )
    try:
        send_mail(_title(esc), body, None, recipients, fail_silently=False)
    except (smtplib.SMTPException, OSError) as exc:
        raise TransportError(f"email to {', '.join(recipients)}: {exc}") from exc
    return {"to": recipients}


def send_webhook(esc: Escalation, note: Notification) -> dict:
    url = settings.ESCALATION_WEBHOOK_URL
    headers = {
        "User-Agent": "unwind-escalation/1",
        # The same key on every retry of this notification: a receiver can drop repeats.
        "Idempotency-Key": f'"unwind-notification-{note.pk}"',
    }
    if esc.rollback.trace_id:
        span = format(random.getrandbits(64) or 1, "016x")
        headers["traceparent"] = f"00-{esc.rollback.trace_id}-{span}-01"
    try:
        response = httpx.post(url, json=webhook_body(esc, note), headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        raise TransportError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
    if not response.is_success:
        raise TransportError(f"POST {url}: HTTP {response.status_code}: {response.text[:200]}")
    return {"url": url, "status": response.status_code}


def channels_for(rollback: Rollback) -> dict[str, Any]:
    """The channels configured (and with somebody to reach) for this rollback."""
    found: dict[str, Any] = {}
    if email_recipients(rollback):
        found[EMAIL] = send_email
    if getattr(settings, "ESCALATION_WEBHOOK_URL", ""):
        found[WEBHOOK] = send_webhook
    return found


# Sending once ---------------------------------------------------------------------------------


def _claim(note: Notification, now: datetime) -> bool:
    """Take the row for this run: unsent, or claimed by a sender that died."""
    claimable = Q(sent_at__isnull=True) | Q(error=SENDING, sent_at__lt=now - CLAIM_TTL)
    return bool(
        Notification.objects.filter(claimable, pk=note.pk).update(sent_at=now, error=SENDING)
    )


def deliver(esc: Escalation, channel: str, send, now: datetime | None = None) -> str:
    """Send one escalation on one channel unless it was sent: 'sent', 'failed' or 'skipped'.

    The network call happens outside any transaction; the result and its ledger entry are
    written together afterwards.
    """
    now = now or timezone.now()
    note, _ = Notification.objects.get_or_create(
        kind=esc.kind, rollback=esc.rollback, subject_key=esc.subject_key, channel=channel
    )
    if now - note.created_at > RETRY_FOR or not _claim(note, now):
        return "skipped"
    previous_error = note.error
    try:
        detail = send(esc, note)
    except TransportError as exc:
        error = str(exc)[:2000]
        with transaction.atomic():
            Notification.objects.filter(pk=note.pk).update(sent_at=None, error=error)
            # A webhook down for an hour fails every run: ledger each new error, not each retry.
            if error != previous_error:
                _record(esc, note, channel, "notification.failed", "failed", error, {})
        log.warning("escalation %s by %s failed: %s", esc.kind, channel, error)
        return "failed"
    except Exception:  # a bug: release the claim so the next run retries, and say so
        Notification.objects.filter(pk=note.pk).update(sent_at=None, error="unexpected error")
        raise
    with transaction.atomic():
        Notification.objects.filter(pk=note.pk).update(sent_at=timezone.now(), error="")
        _record(esc, note, channel, "notification.sent", "ok", esc.subject, detail)
    return "sent"


def _record(
    esc: Escalation,
    note: Notification,
    channel: str,
    action: str,
    outcome: str,
    reason: str,
    detail: dict,
) -> None:
    ledger.record(
        actor=ACTOR,
        action=action,
        subject=note,
        rollback_id=esc.rollback.pk,
        trace_id=esc.rollback.trace_id,
        reason=reason,
        outcome=outcome,
        payload={
            "kind": esc.kind,
            "channel": channel,
            "subject_key": esc.subject_key,
            "subject": esc.subject,
            "is_drill": esc.rollback.is_drill,
            **detail,
        },
    )


def escalate(*, now: datetime | None = None) -> dict[str, int]:
    """One escalation round; returns counts of sent, failed and skipped deliveries."""
    now = now or timezone.now()
    counts = {"sent": 0, "failed": 0, "skipped": 0}
    for esc in due(now):
        for channel, send in channels_for(esc.rollback).items():
            counts[deliver(esc, channel, send, now)] += 1
    return counts
