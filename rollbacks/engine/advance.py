"""``advance``: the one place stages move, and the dispatch of their steps."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

import ledger.services as ledger
from rollbacks import outbox
from rollbacks.engine.base import RUN_STEP, governance, transition_rollback, write_summary
from rollbacks.models import (
    Rollback,
    Stage,
    Step,
)

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State


# Advancing stages ---------------------------------------------------------------------------


def current_stage(rollback: Rollback) -> Stage | None:
    return (
        rollback.stages.exclude(state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED))
        .order_by("index")
        .first()
    )


def dispatch(steps) -> None:
    """A ``run_step`` outbox row per step (one INSERT, published together after commit)."""
    dispatch_due(list(steps.values_list("pk", "next_attempt_at")))


def dispatch_due(due: list[tuple[int, Any]]) -> None:
    """``dispatch`` for (step id, next attempt at) pairs already read."""
    if not due:
        return
    now = timezone.now()
    outbox.enqueue_many(
        RUN_STEP, [({"step_id": pk}, max(next_at or now, now)) for pk, next_at in due]
    )
    Step.objects.filter(pk__in=[pk for pk, _ in due]).update(dispatched_at=now)


def advance(rollback: Rollback) -> None:
    """Move a running rollback forward as far as it can go. Idempotent; call it inside a
    transaction holding the rollback's row lock.

    1. Nothing happens unless the rollback is running (a paused one only records results).
    2. A pending stage starts: manual steps wait for a human, the others are dispatched.
    3. A stage whose steps are all succeeded or skipped succeeds; the next one starts (3
       repeats). A stage with a failed step is halted until a human retries or skips it.
    4. When no stage is left, the rollback finishes: succeeded, or partially rolled back
       when something was skipped.
    """
    if rollback.state != R.RUNNING:
        return
    now = timezone.now()
    for stage in _unfinished_stages(rollback):
        if stage.state == Stage.State.PENDING:
            gov = governance()
            if gov and not gov.stage_is_open(rollback, stage):
                return  # a critical stage waits at its gate until an approver opens it
            states = start_stage(rollback, stage, now)
        else:
            states = set(stage.steps.values_list("state", flat=True))
        if states <= set(Step.DONE):
            Stage.objects.filter(pk=stage.pk).update(state=Stage.State.SUCCEEDED, finished_at=now)
            stage.state = Stage.State.SUCCEEDED
            record_stage(rollback, stage, "stage.succeeded")
            continue
        halted = S.FAILED in states
        wanted = Stage.State.HALTED if halted else Stage.State.RUNNING
        if stage.state != wanted and Stage.objects.filter(pk=stage.pk).exclude(state=wanted).update(
            state=wanted
        ):
            record_stage(rollback, stage, "stage.halted" if halted else "stage.running")
        return
    # No stage is left. Cancelled or failed steps remain only when a follow-up stage ran
    # after an abort.
    skipped = rollback.steps.filter(state__in=(S.SKIPPED, S.CANCELLED, S.FAILED)).exists()
    transition_rollback(
        rollback,
        (R.RUNNING,),
        R.PARTIALLY_ROLLED_BACK if skipped else R.SUCCEEDED,
        actor="worker",
        action="rollback.finished",
        finished_at=now,
    )
    write_summary(rollback)


def _unfinished_stages(rollback: Rollback, page: int = 2):
    """The rollback's unfinished stages in order, read ``page`` at a time: ``advance`` looks
    at one or two of them (the current one, and the next when it just finished), so a plan
    of many stages is not read whole at every step. Under the rollback's row lock only this
    transaction moves them, so the states read stay true as they move in memory."""
    unfinished = rollback.stages.exclude(
        state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED)
    ).order_by("index")
    after = None
    while True:
        stages = list((unfinished if after is None else unfinished.filter(index__gt=after))[:page])
        yield from stages
        if len(stages) < page:
            return
        after = stages[-1].index


def record_stage(rollback: Rollback, stage: Stage, action: str) -> None:
    """Ledger a stage's transition (``stage.started``, ``.running``, ``.halted``, …)."""
    ledger.record(
        actor="worker",
        action=action,
        subject=stage,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        payload={"index": stage.index, "is_drill": rollback.is_drill},
    )


def start_stage(rollback: Rollback, stage: Stage, now) -> set[str]:
    """Pending → running: manual steps wait for a human, the others are dispatched. Returns
    the states of the stage's steps afterwards (read once, then moved in memory too)."""
    Stage.objects.filter(pk=stage.pk, state=Stage.State.PENDING).update(
        state=Stage.State.RUNNING, started_at=now
    )
    stage.state = Stage.State.RUNNING
    record_stage(rollback, stage, "stage.started")
    steps = list(stage.steps.values_list("pk", "state", "is_manual", "next_attempt_at"))
    manual = [pk for pk, state, is_manual, _ in steps if state == S.PENDING and is_manual]
    if manual:
        Step.objects.filter(pk__in=manual, state=S.PENDING).update(state=S.WAITING_HUMAN)
    dispatch_due(
        [
            (pk, next_at)
            for pk, state, is_manual, next_at in steps
            if state == S.PENDING and not is_manual
        ]
    )
    return {S.WAITING_HUMAN if pk in manual else state for pk, state, _, _ in steps}
