"""Operator and governance commands: start, pause, resume, abort, retry, skip, resolve;
release, reject, reopen. Each checks who may, then transitions under the rollback's row lock."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

import ledger.services as ledger
from rollbacks import access
from rollbacks.engine.advance import advance, current_stage, dispatch
from rollbacks.engine.base import (
    EngineError,
    governance,
    locked,
    transition_rollback,
    verb,
    write_summary,
)
from rollbacks.engine.worker import refusal
from rollbacks.models import (
    Rollback,
    Stage,
    Step,
)

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State


def rollback_release(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Awaiting approval → approved. Called by governance, inside its transaction, with the
    rollback's row locked, once the policy is satisfied."""
    transition_rollback(
        rollback,
        (R.AWAITING_APPROVAL,),
        R.APPROVED,
        actor=actor,
        action="rollback.approved",
        reason=reason,
    )


def rollback_require_approval(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Approved (not started) → awaiting approval again: an approval expired or was revoked."""
    transition_rollback(
        rollback,
        (R.APPROVED,),
        R.AWAITING_APPROVAL,
        actor=actor,
        action="rollback.approval_lapsed",
        reason=reason,
    )


def rollback_reject(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Awaiting approval → aborted: an approver said no. Called by governance."""
    transition_rollback(
        rollback,
        (R.AWAITING_APPROVAL,),
        R.ABORTED,
        actor=actor,
        action="rollback.rejected",
        reason=reason,
        finished_at=timezone.now(),
    )
    rollback.steps.filter(state__in=(S.PENDING,)).update(state=S.CANCELLED)
    rollback.stages.filter(state=Stage.State.PENDING).update(state=Stage.State.CANCELLED)
    write_summary(rollback)


def rollback_reopen(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Finished → awaiting approval | approved: a follow-up stage was added (reconcile/).

    Call inside a transaction holding the rollback's row lock, after the new stage exists.
    Governance's ``resubmit`` applies the policies to the changed plan (approvals given for
    the plan as it was no longer count); without one, no approval is required."""
    gov = governance()
    resubmit = getattr(gov, "resubmit", None)
    needs, why = resubmit(rollback, actor) if resubmit else (False, "no approval policy applies")
    transition_rollback(
        rollback,
        Rollback.TERMINAL,
        R.AWAITING_APPROVAL if needs else R.APPROVED,
        actor=actor,
        action="rollback.reopened",
        reason=f"{reason} ({why})",
        finished_at=None,
    )


def rollback_nudge(*, rollback: Rollback) -> None:
    """Re-run ``advance`` under the row lock (after governance opened a stage gate)."""
    with transaction.atomic():
        advance(locked(rollback))


def rollback_start(*, rollback: Rollback, actor: Any) -> Rollback:
    """Approved → running. Governance checks again that the approvals still stand (one may
    have expired or been revoked since): if not, the rollback goes back to awaiting approval."""
    access.require_operator(actor, rollback, "rollback.start")
    gov = governance()
    # One transaction under the rollback's lock: the approvals checked are the ones that
    # hold when it starts. A lapse is committed (back to awaiting approval), then refused.
    with transaction.atomic(), ledger.deferred():
        rollback = locked(rollback)
        ok, why = gov.may_start(rollback) if gov and rollback.state == R.APPROVED else (True, "")
        if not ok:
            rollback_require_approval(rollback=rollback, actor=actor, reason=why)
        else:
            transition_rollback(
                rollback,
                (R.APPROVED,),
                R.RUNNING,
                actor=actor,
                action="rollback.started",
                started_at=timezone.now(),
                started_by=actor if getattr(actor, "is_authenticated", False) else None,
            )
            advance(rollback)
    if not ok:
        raise EngineError({"state": f"cannot start: {why}"})
    return rollback


def rollback_pause(*, rollback: Rollback, actor: Any, reason: str = "") -> Rollback:
    """In-flight steps finish; nothing new starts until resumed."""
    access.require_operator(actor, rollback, "rollback.pause")
    with transaction.atomic():
        rollback = locked(rollback)
        transition_rollback(
            rollback, (R.RUNNING,), R.PAUSED, actor=actor, action="rollback.paused", reason=reason
        )
    return rollback


def rollback_resume(*, rollback: Rollback, actor: Any) -> Rollback:
    access.require_operator(actor, rollback, "rollback.resume")
    with transaction.atomic():
        rollback = locked(rollback)
        transition_rollback(
            rollback, (R.PAUSED,), R.RUNNING, actor=actor, action="rollback.resumed"
        )
        stage = current_stage(rollback)
        if stage is not None and stage.state != Stage.State.PENDING:
            dispatch(stage.steps.filter(state__in=(S.PENDING, S.RETRY_WAIT)))
        advance(rollback)
    return rollback


def rollback_abort(*, rollback: Rollback, actor: Any, reason: str) -> Rollback:
    """Stop for good: pending work is cancelled; steps already running finish and are recorded.

    Ends ``failed`` when a step had failed, else ``aborted``.
    """
    access.require_operator(actor, rollback, "rollback.abort")
    if not (reason or "").strip():
        raise EngineError({"reason": "say why the rollback is aborted"})
    with transaction.atomic():
        rollback = locked(rollback)
        has_failed = rollback.steps.filter(state=S.FAILED).exists()
        transition_rollback(
            rollback,
            (R.DRAFT, R.AWAITING_APPROVAL, R.APPROVED, R.RUNNING, R.PAUSED),
            R.FAILED if has_failed else R.ABORTED,
            actor=actor,
            action="rollback.aborted",
            reason=reason,
            finished_at=timezone.now(),
        )
        rollback.steps.filter(state__in=(S.PENDING, S.RETRY_WAIT, S.WAITING_HUMAN)).update(
            state=S.CANCELLED
        )
        rollback.stages.filter(state=Stage.State.PENDING).update(state=Stage.State.CANCELLED)
        write_summary(rollback)
    return rollback


def _step_action(
    step: Step, actor: Any, action: str, from_states, to_state, *, note: str = "", **fields
) -> Step:
    rollback = step.rollback
    access.require_operator(actor, rollback, action)
    with transaction.atomic():
        rollback = locked(rollback)
        if rollback.is_terminal:
            raise EngineError(
                {
                    "state": f"rollback #{rollback.pk} is {rollback.get_state_display()}: its steps are final"
                }
            )
        updated = Step.objects.filter(pk=step.pk, state__in=from_states).update(
            state=to_state, **fields
        )
        if not updated:
            current = Step.objects.get(pk=step.pk)
            raise EngineError(
                {
                    "state": f"step #{step.pk} is {current.get_state_display()}: cannot {verb(action)}"
                }
            )
        ledger.record(
            actor=actor,
            action=action,
            subject=step,
            rollback_id=rollback.pk,
            reason=note,
            trace_id=rollback.trace_id,
            payload={
                "from": list(from_states),
                "to": to_state,
                "system": step.system.slug,
                "is_drill": rollback.is_drill,
            },
        )
        if to_state == S.PENDING:
            dispatch(Step.objects.filter(pk=step.pk))
        advance(rollback)
    step.refresh_from_db()
    return step


def step_retry(*, step: Step, actor: Any) -> Step:
    """A failed step gets a fresh budget of attempts (not while its rollback's authority
    is gone: the worker would refuse it again, see ``worker.refuse``)."""
    if access.can_operate(actor, step.rollback) and (why := refusal(step.rollback, [step.system])):
        raise EngineError({"state": f"cannot retry: {why}; abort and plan a new rollback"})
    budget = (
        step.contract.actions.get(step.forward_action.action_type, {}) if step.contract else {}
    ).get("attempts", 3)
    return _step_action(
        step,
        actor,
        "step.retried",
        (S.FAILED,),
        S.PENDING,
        max_attempts=F("attempts") + budget,
        next_attempt_at=None,
        last_error="",
    )


def step_skip(*, step: Step, actor: Any, reason: str) -> Step:
    """Give up on a step (its effect stays undone) so that the next stage may start."""
    if not (reason or "").strip():
        raise EngineError({"reason": "a skip needs a justification"})
    return _step_action(
        step,
        actor,
        "step.skipped",
        (S.PENDING, S.RETRY_WAIT, S.FAILED, S.WAITING_HUMAN),
        S.SKIPPED,
        note=reason,
        human_note=reason,
        finished_at=timezone.now(),
    )


def step_resolve(*, step: Step, actor: Any, note: str) -> Step:
    """A human did a manual step (or confirmed it was done)."""
    if not (note or "").strip():
        raise EngineError({"note": "say what was done"})
    return _step_action(
        step,
        actor,
        "step.resolved",
        (S.WAITING_HUMAN,),
        S.SUCCEEDED,
        note=note,
        human_note=note,
        finished_at=timezone.now(),
    )
