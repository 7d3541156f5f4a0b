"""The sweeper: what crashes left behind (expired leases, unsent outbox rows)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

import ledger.services as ledger
from rollbacks import outbox
from rollbacks.engine.advance import advance, dispatch
from rollbacks.engine.base import locked
from rollbacks.models import (
    Attempt,
    Rollback,
    Stage,
    Step,
)

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State
REDISPATCH_AFTER = timedelta(seconds=15)  # a pending step not claimed by then lost its message


# The sweeper --------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Recover what crashes left behind. Safe to run anywhere, any number of times at once.

    1. Steps whose lease expired (the worker died) are handed on (``expire_leases``).
    2. Without the execution loop (``ENGINE_RUNNER`` off), pending steps of running
       rollbacks whose message was lost are dispatched again. With it, nothing is re-sent:
       the loops claim due steps from the database whatever became of their messages, so a
       message still waiting in the broker is never sent twice.
    3. Outbox rows that a crash between commit and publish left unsent are published.
    """
    now = timezone.now()
    counts = {"expired": expire_leases(now), "redispatched": 0, "published": 0}
    if not settings.ENGINE_RUNNER:
        counts["redispatched"] = _redispatch_lost(now)
    counts["published"] = outbox.publish_due()
    return counts


def expire_leases(now=None) -> int:
    """Steps whose lease expired: the attempt is marked lost, the fencing token bumped so a
    zombie's late answer is refused, and the step retried at once — or left waiting for a
    human when its attempts are used up. Returns how many were handed on."""
    now = now or timezone.now()
    expired = 0
    for step_id in Step.objects.filter(state=S.RUNNING, lease_expires_at__lt=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            step = (
                Step.objects.select_for_update()
                .filter(pk=step_id, state=S.RUNNING, lease_expires_at__lt=now)
                .first()
            )
            if step is None:
                continue
            rollback = locked(step.rollback)
            exhausted = step.attempts >= step.max_attempts
            Step.objects.filter(pk=step.pk).update(
                state=S.FAILED if exhausted else S.RETRY_WAIT,
                fencing_token=F("fencing_token") + 1,
                lease_expires_at=None,
                next_attempt_at=now,
                last_error="the worker running this step stopped answering (lease expired)"
                + ("; attempts used up, waiting for a human" if exhausted else ""),
            )
            Attempt.objects.filter(step=step, outcome=Attempt.Outcome.RUNNING).update(
                outcome=Attempt.Outcome.LOST, finished_at=now, error="lease expired"
            )
            ledger.record(
                actor="sweeper",
                action="step.lease_expired",
                subject=step,
                rollback_id=rollback.pk,
                trace_id=rollback.trace_id,
                outcome="failed",
                payload={
                    "attempt": step.attempts,
                    "fencing_token": step.fencing_token,
                    "is_drill": rollback.is_drill,
                },
            )
            if not exhausted and rollback.state == R.RUNNING:
                dispatch(Step.objects.filter(pk=step.pk))
            advance(rollback)
            expired += 1
    return expired


def _redispatch_lost(now) -> int:
    """Pending steps of running stages not claimed REDISPATCH_AFTER after their dispatch."""
    stale = (
        Step.objects.filter(
            state__in=(S.PENDING, S.RETRY_WAIT),
            rollback__state=R.RUNNING,
            stage__state__in=(Stage.State.RUNNING, Stage.State.HALTED),
        )
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=now - REDISPATCH_AFTER))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=now - REDISPATCH_AFTER))
    )
    with transaction.atomic():
        ids = list(stale.values_list("pk", flat=True)[:1000])
        if ids:
            dispatch(Step.objects.filter(pk__in=ids))
    return len(ids)
