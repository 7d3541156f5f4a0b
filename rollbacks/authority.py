"""The workers' repeat of the services' checks: a rollback runs on the authority of whoever
started it, and that authority is checked again before each step runs.

The starter (``Rollback.started_by``: the operator who started it or broke the glass, or the
account an alert's trigger rule started it as) must still hold the operator role and
``operate_system`` on the step's system; for a rollback an alert started without a human's
approval, governance also checks that the policies still let an alert start it. When not,
the step does not run: it fails, waiting for a human, with the reason, and the refusal is
ledgered. Retrying it is refused while the reason stands; abort and plan a new rollback, or
restore the right.
"""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

import ledger.services as ledger
from rollbacks import access
from rollbacks.models import Rollback, Stage, Step, System

S = Step.State


def refusal(rollback: Rollback, systems: list[System]) -> str:
    """Why ``rollback`` may no longer act on ``systems`` ('' when it may)."""
    from rollbacks.engine import governance

    starter = rollback.started_by
    why = access.operate_refusal(starter, systems) if starter else "no account answers for it"
    if not why and (gov := governance()) and hasattr(gov, "may_continue"):
        why = gov.may_continue(rollback)
    return why


def refuse_step(step_id: int) -> bool:
    """Called by the worker, in its transaction, before it claims a step. True when the step
    was refused (it then fails, waiting for a human, and the stage halts); False when it may
    run, or is not claimable anyway (the claim then finds nothing, as before)."""
    step = claimable_step(step_id)
    return step is not None and refuse(step)


def claimable_step(step_id: int) -> Step | None:
    """The step with what the worker needs (its rollback and starter, system, forward
    action), if it is claimable now; None otherwise."""
    now = timezone.now()
    return (
        Step.objects.filter(
            pk=step_id,
            state__in=(S.PENDING, S.RETRY_WAIT),
            is_manual=False,
            rollback__state=Rollback.State.RUNNING,
            stage__state__in=(Stage.State.RUNNING, Stage.State.HALTED),
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .select_related("rollback__started_by", "system", "forward_action")
        .first()
    )


def refuse(step: Step) -> bool:
    """``refuse_step`` for a step ``claimable_step`` found."""
    from rollbacks import engine

    why = refusal(step.rollback, [step.system])
    if not why:
        return False
    rollback = engine._locked(step.rollback)
    message = f"refused before it ran: {why} (it runs on the authority of who started it)"
    if Step.objects.filter(pk=step.pk, state__in=(S.PENDING, S.RETRY_WAIT)).update(
        state=S.FAILED, last_error=message, lease_expires_at=None
    ):
        ledger.record(
            actor="worker",
            action="step.refused",
            subject=step,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            outcome="refused",
            reason=why,
            payload={
                "system": step.system.slug,
                "started_by": step.rollback.started_by.get_username()
                if step.rollback.started_by
                else None,
            },
        )
        engine.advance(rollback)
    return True
