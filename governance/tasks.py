"""Celery tasks of governance: thin, ids only, keyword arguments; the services do the work."""

from __future__ import annotations

from celery import shared_task

from governance import alerts, notifications


@shared_task(ignore_result=True, max_retries=0, acks_late=True)
def match_alerts(
    *, alert_ids: list[int], group_alert_ids: list[int] | None = None, actor_id: int | None = None
) -> dict:
    """Match newly stored firing alerts against the trigger rules (queued by the webhook)."""
    return alerts.alerts_match(
        alert_ids=alert_ids, group_alert_ids=group_alert_ids, actor_id=actor_id
    )


@shared_task(ignore_result=True, max_retries=0)
def match_stale_alerts() -> dict:
    """Beat: match firing alerts whose matching message was lost."""
    return alerts.alerts_match_stale()


@shared_task(ignore_result=True, max_retries=0)
def escalate() -> dict:
    """Beat: notify overdue approvals, steps waiting for a human and failed rollbacks."""
    return notifications.escalate()
