"""The rollback engine: plan, the state machines of rollback, stage and step, and execution.

Every transition is a conditional update (compare-and-set on the current state) in one
transaction together with its ledger entry; follow-up work goes through the outbox, so it
is published only after the commit and never lost. Celery messages only nudge: a worker
re-reads the database and claims a step with a lease and a fencing token, and a late answer
from an attempt whose token is stale is refused. See docs/engine.md.
"""

from __future__ import annotations

import logging
import random
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import ledger.services as ledger
from rollbacks import access, outbox, planning, services
from rollbacks.models import (
    Attempt,
    Contract,
    DependencyMap,
    ForwardAction,
    Outbox,
    ProcessRun,
    Rollback,
    Stage,
    Step,
)
from rollbacks.permissions import grant_rollback

log = logging.getLogger(__name__)
tracer = trace.get_tracer("unwind.engine")

RUN_STEP = "rollbacks.tasks.run_step"
# A claim's lease, renewed every LEASE/3 while the attempt runs: a killed worker's steps are
# handed on within one lease (docs/engine.md, "Recovery").
LEASE = timedelta(seconds=settings.ENGINE_LEASE_S)
if settings.ENGINE_RUNNER:
    # With execution loops, a stage's steps dispatched together go out as one message: the
    # loop that gets it claims them all (as many as it has room for; others poll the rest).
    outbox.batched(RUN_STEP, as_task="rollbacks.tasks.run_steps", key="step_id", many="step_ids")
REDISPATCH_AFTER = timedelta(seconds=15)  # a pending step not claimed by then lost its message
S = Step.State
R = Rollback.State


# Sent inside the transaction that moves a rollback to a terminal state (kwargs: rollback,
# actor); reconcile/ listens and queues its checks through the outbox.
rollback_ended = Signal()


class EngineError(ValidationError):
    """The action is not possible; built from {field: message} so callers can name the field
    (``state`` when the current state forbids it)."""


# Planning ------------------------------------------------------------------------------------


@dataclass
class PlannedStep:
    action: ForwardAction
    contract: Contract | None
    kind: str
    spec: dict
    is_manual: bool
    manual_reason: str
    policy: dict


def _step_policy(action_spec: dict) -> dict:
    backoff = action_spec.get("backoff") or {}
    return {
        "retryable": action_spec.get("retryable", True),
        "max_attempts": action_spec.get("attempts", 3),
        "backoff_initial_s": backoff.get("initial_s", 1.0),
        "backoff_max_s": backoff.get("max_s", 30.0),
        "backoff_multiplier": backoff.get("multiplier", 2.0),
        "timeout_s": action_spec.get("timeout_s", 30.0),
    }


def _plan_action(action: ForwardAction, contract: Contract | None) -> PlannedStep:
    """The compensation a contract defines for one forward action; a manual step otherwise."""
    action_spec = (contract.actions.get(action.action_type) if contract else None) or {}
    comp = action_spec.get("compensation")
    manual = ""
    if contract is None:
        manual = f"{action.system.slug} has no contract"
    elif not action_spec:
        manual = f"contract v{contract.version} of {action.system.slug} does not cover {action.action_type}"
    elif action_spec.get("point_of_no_return"):
        manual = "point of no return: a human must undo this"
    elif not comp:
        manual = "the contract defines no compensation"
    elif comp.get("kind") == "manual":
        manual = "the contract's compensation is manual"
    spec = comp or {
        "kind": "manual",
        "instructions": f"Undo {action.action_type} on {action.system.slug} by hand.",
    }
    if manual and spec.get("kind") != "manual":
        spec = {
            "kind": "manual",
            "instructions": spec.get("instructions")
            or f"Undo {action.action_type} "
            f"on {action.system.slug} by hand (the automatic compensation would be {spec.get('kind')}).",
        }
    return PlannedStep(
        action, contract, spec["kind"], spec, bool(manual), manual, _step_policy(action_spec)
    )


def _template_context(
    action: ForwardAction, run: ProcessRun, rollback: Rollback, step: Step
) -> dict:
    return {
        "params": action.params or {},
        "before": action.before,
        "after": action.after,
        "action": {
            "id": action.pk,
            "type": action.action_type,
            "idempotency_key": action.idempotency_key,
            "system": action.system.slug,
        },
        **template_roots(run, rollback),
        "step": {"id": step.pk, "idempotency_key": step.idempotency_key},
    }


def template_roots(run: ProcessRun, rollback: Rollback) -> dict:
    """The ``run`` and ``rollback`` roots of templates (reconciliation checks use them too)."""
    return {
        "run": {
            "id": run.pk,
            "external_id": run.external_id,
            "process": run.process,
            "trace_id": run.trace_id,
        },
        "rollback": {
            "id": rollback.pk,
            "reason": rollback.reason,
            "is_drill": rollback.is_drill,
            "requested_by": rollback.requested_by.get_username() if rollback.requested_by else "",
        },
    }


def _new_trace_id() -> str:
    return format(random.getrandbits(128) or 1, "032x")


# A rollback that ended so has undone the run: another (but a drill) is refused.
ROLLED_BACK = (R.SUCCEEDED, R.PARTIALLY_ROLLED_BACK)


def rollback_plan(
    *,
    run: ProcessRun,
    actor: Any,
    reason: str,
    is_drill: bool = False,
    trigger: str = "manual",
    faults: list[dict] | None = None,
    require_failure: bool = False,
) -> Rollback:
    """Plan the unwind of a run: a step per completed forward action, in stages.

    1. Refuse without a reason, for a run with nothing to undo, with a rollback under way
       or one that already undid it (drills excepted); with ``require_failure`` (the page
       and the API: a person or a token asks) for a run that has not reported its failure
       (an alert's trigger rule is itself the news that the run fails).
    2. Pin the newest dependency map and each system's newest contract.
    3. Every completed action gets the compensation its contract defines; a point of no
       return, a missing contract or compensation, or a template that cannot be filled
       becomes a manual step with the reason — nothing is silently dropped.
    4. Stage the systems with ``planning.plan_stages`` over the pinned map.
    5. Write rollback, stages and steps with the ledger entry, then ask the approval gate.
       A drill's injected ``faults`` are stored in the same transaction (docs/drills.md).
    """
    from rollbacks.templating import TemplateError, render_compensation

    if not access.can_operate_run(actor, run):
        access.refuse(
            actor=actor,
            action="rollback.plan",
            subject=run,
            why="only an operator of the run's teams may plan its rollback",
        )
    reason = (reason or "").strip()
    if not reason:
        raise EngineError({"reason": "say why this run is being rolled back"})
    if faults and not is_drill:
        raise EngineError({"faults": "faults can be injected into drills only: plan a drill"})
    actions = list(
        run.actions.filter(status=ForwardAction.Status.COMPLETED)
        .select_related("system")
        .order_by("sequence")
    )
    if not actions:
        raise EngineError(
            {"run": f"{run} reported no completed forward action: there is nothing to undo"}
        )
    if require_failure and run.status == ProcessRun.Status.RUNNING:
        raise EngineError(
            {"run": f"{run} is still running: report its failure before rolling it back"}
        )
    with transaction.atomic():
        ProcessRun.objects.select_for_update().get(pk=run.pk)
        if Rollback.objects.filter(run=run).exclude(state__in=Rollback.TERMINAL).exists():
            raise EngineError({"run": f"{run} already has a rollback under way"})
        done = Rollback.objects.filter(run=run, is_drill=False, state__in=ROLLED_BACK).first()
        if done is not None and not is_drill:
            raise EngineError(
                {"run": f"{run} was already rolled back by rollback #{done.pk} ({done.state})"}
            )
        dep_map = DependencyMap.objects.latest_published()
        contracts = services.latest_contracts({a.system for a in actions})
        planned = [_plan_action(a, contracts.get(a.system_id)) for a in actions]
        stages = planning.plan_stages({a.system.slug for a in actions}, services.map_edges(dep_map))
        stage_of = {slug: i for i, slugs in enumerate(stages, start=1) for slug in slugs}
        rollback = Rollback.objects.create(
            run=run,
            reason=reason,
            is_drill=is_drill,
            trigger=trigger,
            dependency_map=dep_map,
            state=R.DRAFT,
            requested_by=actor if getattr(actor, "is_authenticated", False) else None,
            trace_id=run.trace_id or _new_trace_id(),
        )
        stage_rows = {
            i: Stage.objects.create(rollback=rollback, index=i) for i in range(1, len(stages) + 1)
        }
        for p in planned:
            step = Step.objects.create(
                rollback=rollback,
                stage=stage_rows[stage_of[p.action.system.slug]],
                forward_action=p.action,
                system=p.action.system,
                contract=p.contract,
                kind=p.kind,
                is_manual=p.is_manual,
                manual_reason=p.manual_reason,
                spec=p.spec,
                # Stable per forward action: a second rollback of the same action reuses the
                # key, so a target that already undid it does not undo it twice.
                idempotency_key=f"unwind-undo-{p.action.pk}",
                **p.policy,
            )
            try:
                step.spec = render_compensation(
                    p.spec, _template_context(p.action, run, rollback, step)
                )
            except TemplateError as exc:
                step.is_manual, step.kind = True, "manual"
                step.manual_reason = f"the compensation could not be filled in: {exc}"[:200]
                step.spec = {
                    "kind": "manual",
                    "instructions": f"Undo {p.action.action_type} on {p.action.system.slug} by hand.",
                }
            step.save(update_fields=["spec", "is_manual", "kind", "manual_reason"])
        ledger.record(
            actor=actor,
            action="rollback.planned",
            subject=rollback,
            rollback_id=rollback.pk,
            reason=reason,
            trace_id=rollback.trace_id,
            payload={
                "run": run.pk,
                "dependency_map": dep_map.version if dep_map else None,
                "contracts": {c.system.slug: c.version for c in contracts.values()},
                "stages": [[s for s in st] for st in stages],
                "steps": len(planned),
                "manual": [p.action.pk for p in planned if p.is_manual],
                "is_drill": is_drill,
            },
        )
        grant_rollback(rollback)  # its teams may see, operate and approve it (guardian)
        if faults:
            drill_hooks(required_for="faults").plan_faults(
                rollback=rollback, faults=faults, actor=actor
            )
        _submit(rollback, actor)
    return rollback


def governance():
    """The governance module (``settings.UNWIND_GOVERNANCE``), or None when none is set.

    Imports flow governance → rollbacks, so the engine finds it by name. It provides
    ``submit(rollback, actor) -> (needs_approval, why)``, ``may_start(rollback) -> (ok, why)``
    and ``stage_is_open(rollback, stage) -> bool``; optionally ``may_continue(rollback) ->
    why not`` ('' to go on), which the workers ask before each step (authority.py).
    """
    from importlib import import_module

    from django.conf import settings

    path = getattr(settings, "UNWIND_GOVERNANCE", "")
    return import_module(path) if path else None


def drill_hooks(*, required_for: str = ""):
    """The drills module (``settings.UNWIND_DRILLS``): a drill's faults. None when none is
    set; an ``EngineError`` naming ``required_for`` when the caller cannot do without it."""
    from importlib import import_module

    from django.conf import settings

    path = getattr(settings, "UNWIND_DRILLS", "")
    if not path and required_for:
        raise EngineError({required_for: "drills are not configured (UNWIND_DRILLS)"})
    return import_module(path) if path else None


def _executor_for(step: Step, attempt: Attempt):
    """A drill's step runs against a rehearsal target, with the drill's injected faults."""
    from rollbacks.executors import executor_for_step

    executor = executor_for_step(
        step.kind, is_drill=step.rollback.is_drill, is_rehearsal_target=step.system.is_rehearsal
    )
    hooks = drill_hooks() if step.rollback.is_drill else None
    return hooks.executor(step=step, attempt=attempt, executor=executor) if hooks else executor


def _submit(rollback: Rollback, actor: Any) -> None:
    """Draft → awaiting approval, or → approved when no approval policy requires one."""
    gov = governance()
    needs, why = gov.submit(rollback, actor) if gov else (False, "no approval policy is configured")
    target = R.AWAITING_APPROVAL if needs else R.APPROVED
    _transition_rollback(
        rollback, (R.DRAFT,), target, actor=actor, action="rollback.submitted", reason=why
    )


def rollback_release(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Awaiting approval → approved. Called by governance, inside its transaction, with the
    rollback's row locked, once the policy is satisfied."""
    _transition_rollback(
        rollback,
        (R.AWAITING_APPROVAL,),
        R.APPROVED,
        actor=actor,
        action="rollback.approved",
        reason=reason,
    )


def rollback_require_approval(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Approved (not started) → awaiting approval again: an approval expired or was revoked."""
    _transition_rollback(
        rollback,
        (R.APPROVED,),
        R.AWAITING_APPROVAL,
        actor=actor,
        action="rollback.approval_lapsed",
        reason=reason,
    )


def rollback_reject(*, rollback: Rollback, actor: Any, reason: str) -> None:
    """Awaiting approval → aborted: an approver said no. Called by governance."""
    _transition_rollback(
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
    _transition_rollback(
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
        advance(_locked(rollback))


# Transitions ---------------------------------------------------------------------------------

_VERBS = {
    "started": "start",
    "paused": "pause",
    "resumed": "resume",
    "aborted": "abort",
    "retried": "retry",
    "skipped": "skip",
    "resolved": "resolve",
    "submitted": "submit",
    "reopened": "add a follow-up stage to it",
}


def _verb(action: str) -> str:
    """'rollback.paused' -> 'pause', for messages that say what could not be done."""
    done = action.split(".")[-1]
    return _VERBS.get(done, done)


def _transition_rollback(
    rollback: Rollback, from_states, to_state, *, actor, action, reason="", **fields
) -> None:
    updated = Rollback.objects.filter(pk=rollback.pk, state__in=from_states).update(
        state=to_state, **fields
    )
    if not updated:
        current = Rollback.objects.values_list("state", flat=True).get(pk=rollback.pk)
        raise EngineError(
            {
                "state": f"rollback #{rollback.pk} is {Rollback.State(current).label}: cannot {_verb(action)}"
            }
        )
    ledger.record(
        actor=actor,
        action=action,
        subject=rollback,
        rollback_id=rollback.pk,
        reason=reason,
        trace_id=rollback.trace_id,
        payload={"from": list(from_states), "to": to_state, "is_drill": rollback.is_drill},
    )
    rollback.state = to_state
    for k, v in fields.items():
        setattr(rollback, k, v)
    if to_state in Rollback.TERMINAL:
        rollback_ended.send(sender=Rollback, rollback=rollback, actor=actor)


def _locked(rollback: Rollback) -> Rollback:
    return Rollback.objects.select_for_update().get(pk=rollback.pk)


def rollback_start(*, rollback: Rollback, actor: Any) -> Rollback:
    """Approved → running. Governance checks again that the approvals still stand (one may
    have expired or been revoked since): if not, the rollback goes back to awaiting approval."""
    access.require_operator(actor, rollback, "rollback.start")
    gov = governance()
    with transaction.atomic():
        rollback = _locked(rollback)
        ok, why = gov.may_start(rollback) if gov and rollback.state == R.APPROVED else (True, "")
        if not ok:
            rollback_require_approval(rollback=rollback, actor=actor, reason=why)
    if not ok:
        raise EngineError({"state": f"cannot start: {why}"})
    with transaction.atomic():
        rollback = _locked(rollback)
        _transition_rollback(
            rollback,
            (R.APPROVED,),
            R.RUNNING,
            actor=actor,
            action="rollback.started",
            started_at=timezone.now(),
            started_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        advance(rollback)
    return rollback


def rollback_pause(*, rollback: Rollback, actor: Any, reason: str = "") -> Rollback:
    """In-flight steps finish; nothing new starts until resumed."""
    access.require_operator(actor, rollback, "rollback.pause")
    with transaction.atomic():
        rollback = _locked(rollback)
        _transition_rollback(
            rollback, (R.RUNNING,), R.PAUSED, actor=actor, action="rollback.paused", reason=reason
        )
    return rollback


def rollback_resume(*, rollback: Rollback, actor: Any) -> Rollback:
    access.require_operator(actor, rollback, "rollback.resume")
    with transaction.atomic():
        rollback = _locked(rollback)
        _transition_rollback(
            rollback, (R.PAUSED,), R.RUNNING, actor=actor, action="rollback.resumed"
        )
        stage = _current_stage(rollback)
        if stage is not None and stage.state != Stage.State.PENDING:
            _dispatch(stage.steps.filter(state__in=(S.PENDING, S.RETRY_WAIT)))
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
        rollback = _locked(rollback)
        has_failed = rollback.steps.filter(state=S.FAILED).exists()
        _transition_rollback(
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
        rollback = _locked(rollback)
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
                    "state": f"step #{step.pk} is {current.get_state_display()}: cannot {_verb(action)}"
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
            _dispatch(Step.objects.filter(pk=step.pk))
        advance(rollback)
    step.refresh_from_db()
    return step


def step_retry(*, step: Step, actor: Any) -> Step:
    """A failed step gets a fresh budget of attempts (not while its rollback's authority
    is gone: the worker would refuse it again, see authority.py)."""
    from rollbacks import authority

    if access.can_operate(actor, step.rollback) and (
        why := authority.refusal(step.rollback, [step.system])
    ):
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


# Advancing stages ---------------------------------------------------------------------------


def _current_stage(rollback: Rollback) -> Stage | None:
    return (
        rollback.stages.exclude(state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED))
        .order_by("index")
        .first()
    )


def _dispatch(steps) -> None:
    """A ``run_step`` outbox row per step (one INSERT, published together after commit)."""
    _dispatch_due(list(steps.values_list("pk", "next_attempt_at")))


def _dispatch_due(due: list[tuple[int, Any]]) -> None:
    """``_dispatch`` for (step id, next attempt at) pairs already read."""
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
    # The unfinished stages, read once: under the rollback's row lock only this
    # transaction moves them, so their states in memory stay true as they move.
    stages = list(
        rollback.stages.exclude(state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED)).order_by(
            "index"
        )
    )
    for stage in stages:
        if stage.state == Stage.State.PENDING:
            gov = governance()
            if gov and not gov.stage_is_open(rollback, stage):
                return  # a critical stage waits at its gate until an approver opens it
            states = _start_stage(rollback, stage, now)
        else:
            states = set(stage.steps.values_list("state", flat=True))
        if states <= set(Step.DONE):
            Stage.objects.filter(pk=stage.pk).update(state=Stage.State.SUCCEEDED, finished_at=now)
            stage.state = Stage.State.SUCCEEDED
            _record_stage(rollback, stage, "stage.succeeded")
            continue
        halted = S.FAILED in states
        wanted = Stage.State.HALTED if halted else Stage.State.RUNNING
        if stage.state != wanted and Stage.objects.filter(pk=stage.pk).exclude(state=wanted).update(
            state=wanted
        ):
            _record_stage(rollback, stage, "stage.halted" if halted else "stage.running")
        return
    # No stage is left. Cancelled or failed steps remain only when a follow-up stage ran
    # after an abort.
    skipped = rollback.steps.filter(state__in=(S.SKIPPED, S.CANCELLED, S.FAILED)).exists()
    _transition_rollback(
        rollback,
        (R.RUNNING,),
        R.PARTIALLY_ROLLED_BACK if skipped else R.SUCCEEDED,
        actor="worker",
        action="rollback.finished",
        finished_at=now,
    )
    write_summary(rollback)


def _record_stage(rollback: Rollback, stage: Stage, action: str) -> None:
    """Ledger a stage's transition (``stage.started``, ``.running``, ``.halted``, …)."""
    ledger.record(
        actor="worker",
        action=action,
        subject=stage,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        payload={"index": stage.index, "is_drill": rollback.is_drill},
    )


def _start_stage(rollback: Rollback, stage: Stage, now) -> set[str]:
    """Pending → running: manual steps wait for a human, the others are dispatched. Returns
    the states of the stage's steps afterwards (read once, then moved in memory too)."""
    Stage.objects.filter(pk=stage.pk, state=Stage.State.PENDING).update(
        state=Stage.State.RUNNING, started_at=now
    )
    stage.state = Stage.State.RUNNING
    _record_stage(rollback, stage, "stage.started")
    steps = list(stage.steps.values_list("pk", "state", "is_manual", "next_attempt_at"))
    manual = [pk for pk, state, is_manual, _ in steps if state == S.PENDING and is_manual]
    if manual:
        Step.objects.filter(pk__in=manual, state=S.PENDING).update(state=S.WAITING_HUMAN)
    _dispatch_due(
        [
            (pk, next_at)
            for pk, state, is_manual, next_at in steps
            if state == S.PENDING and not is_manual
        ]
    )
    return {S.WAITING_HUMAN if pk in manual else state for pk, state, _, _ in steps}


def rollback_outcome(rollback: Rollback) -> dict[str, list[str]]:
    """What was undone and what was not, in words an operator reads at 3 a.m."""
    undone, not_undone = [], []
    for step in rollback.steps.select_related("system", "forward_action").order_by(
        "stage__index", "id"
    ):
        what = f"{step.forward_action.action_type} on {step.system.slug}"
        if step.state == S.SUCCEEDED:
            undone.append(what + (f" (by hand: {step.human_note})" if step.is_manual else ""))
        elif step.state == S.SKIPPED:
            not_undone.append(f"{what}: skipped — {step.human_note}")
        else:
            not_undone.append(
                f"{what}: {step.get_state_display()}"
                + (f" — {step.last_error}" if step.last_error else "")
            )
    return {"undone": undone, "not_undone": not_undone}


def write_summary(rollback: Rollback) -> None:
    """Store what was undone and what was not on the rollback (``rollback_outcome``)."""
    outcome = rollback_outcome(rollback)
    text = f"Undone: {len(outcome['undone'])} of {len(outcome['undone']) + len(outcome['not_undone'])} steps."
    if outcome["not_undone"]:
        text += " Not undone: " + "; ".join(outcome["not_undone"]) + "."
    Rollback.objects.filter(pk=rollback.pk).update(outcome_summary=text)
    rollback.outcome_summary = text


# Execution ----------------------------------------------------------------------------------


def _backoff(step: Step) -> timedelta:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(
        step.backoff_max_s,
        step.backoff_initial_s * step.backoff_multiplier ** max(step.attempts - 1, 0),
    )
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))


def _claim(step_id: int, worker: str, outbox_id: int | None = None) -> tuple[Step, Attempt] | None:
    """Claim the step (compare-and-set), open its attempt and ledger it, in one transaction.
    ``outbox_id``: the step's unsent outbox row, held by this worker (the fast path), marked
    sent in the same transaction as the claim."""
    from rollbacks import authority

    now = timezone.now()
    with transaction.atomic():
        step = authority.claimable_step(step_id)
        if step is not None and authority.refuse(step):  # the starter's rights (authority.py)
            return None
        claimed = _claim_update(step_id, now)
        if claimed is None:
            return None
        if outbox_id is not None:
            outbox.mark_sent([outbox_id], at=now)  # taken at the claim: no broker hop
        if step is None or claimed == ():  # claimable only since the read above; or SQLite
            step = Step.objects.select_related("rollback", "system", "forward_action").get(
                pk=step_id
            )
        else:
            step.state, step.lease_expires_at = S.RUNNING, now + LEASE
            step.attempts, step.fencing_token = claimed
        (attempt,) = open_attempts([step], worker, now)
    return step, attempt


def open_attempts(steps: list[Step], worker: str, now) -> list[Attempt]:
    """The attempts of steps just claimed (one INSERT) and their ``step.attempt.started``
    entries, in the claim's transaction."""
    attempts = Attempt.objects.bulk_create(
        [
            Attempt(
                step=step,
                number=step.attempts,
                fencing_token=step.fencing_token,
                worker=worker,
                started_at=now,
                trace_id=step.rollback.trace_id,
            )
            for step in steps
        ]
    )
    for step in steps:
        ledger.record(
            actor="worker",
            action="step.attempt.started",
            subject=step,
            rollback_id=step.rollback_id,
            trace_id=step.rollback.trace_id,
            payload={
                "attempt": step.attempts,
                "fencing_token": step.fencing_token,
                "worker": worker,
                "is_drill": step.rollback.is_drill,
            },
        )
    return attempts


_PG_CLAIM = (
    "UPDATE rollbacks_step AS s SET state = %(running)s, attempts = s.attempts + 1, "
    "fencing_token = s.fencing_token + 1, lease_expires_at = %(lease)s "
    "FROM rollbacks_rollback AS r, rollbacks_stage AS st "
    "WHERE s.id = %(id)s AND s.state IN (%(pending)s, %(retry_wait)s) AND NOT s.is_manual "
    "AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= %(now)s) "
    "AND r.id = s.rollback_id AND r.state = %(rollback_running)s "
    "AND st.id = s.stage_id AND st.state IN (%(stage_running)s, %(stage_halted)s) "
    "RETURNING s.attempts, s.fencing_token"
)


def _claim_update(step_id: int, now) -> tuple[int, ...] | None:
    """The claim's compare-and-set: only a step of the stage under way, of a running
    rollback, that is pending or due for a retry. A stray or early message for a later
    stage finds nothing to claim (the order invariant). Returns (attempts, fencing token)
    after the claim, ``()`` when claimed but not returned (SQLite), None when not claimed."""
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":  # one round trip, and the new token with it
        with connection.cursor() as cursor:
            cursor.execute(
                _PG_CLAIM,
                {
                    "id": step_id,
                    "now": now,
                    "lease": now + LEASE,
                    "running": S.RUNNING,
                    "pending": S.PENDING,
                    "retry_wait": S.RETRY_WAIT,
                    "rollback_running": R.RUNNING,
                    "stage_running": Stage.State.RUNNING,
                    "stage_halted": Stage.State.HALTED,
                },
            )
            row = cursor.fetchone()
        return tuple(row) if row else None
    claimed = (
        Step.objects.filter(
            pk=step_id,
            state__in=(S.PENDING, S.RETRY_WAIT),
            is_manual=False,
            rollback__state=R.RUNNING,
            stage__state__in=(Stage.State.RUNNING, Stage.State.HALTED),
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(
            state=S.RUNNING,
            attempts=F("attempts") + 1,
            fencing_token=F("fencing_token") + 1,
            lease_expires_at=now + LEASE,
        )
    )
    return () if claimed else None


class _LeaseKeeper(threading.Thread):
    """Renews the lease while an attempt runs, so a long compensation keeps it and a killed
    worker loses it within one lease period, whatever the broker does."""

    def __init__(self, step: Step):
        super().__init__(daemon=True)
        self.step, self.stopped = step, threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopped.wait(LEASE.total_seconds() / 3):
                Step.objects.filter(
                    pk=self.step.pk, fencing_token=self.step.fencing_token, state=S.RUNNING
                ).update(lease_expires_at=timezone.now() + LEASE)
        finally:
            connection.close()


def _traceparent(trace_id: str) -> tuple[str, Any]:
    parent = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def step_run(*, step_id: int, worker: str = "worker") -> str:
    """Claim, execute outside any transaction, record; then go on with a step that the
    record dispatched (the fast path). Returns what happened to ``step_id`` (for logs and
    tests).

    1. Run the step (``_run_claimed``). Its record transaction may start the next stage and
       dispatch steps; their outbox rows are committed with it, but held back from the
       broker (``outbox.holding``).
    2. When it dispatched any, claim and run the first one here, without a broker hop: the
       claim is the same compare-and-set as a worker's (order, pause, leases, the starter's
       authority) and marks the row sent in its own transaction. The others are published.
       A row this worker does not claim after all is published; if the worker dies first,
       the sweeper publishes it (it is an unsent row like any other).
    3. At most ``settings.ENGINE_INLINE_STEPS`` steps in a row, then the broker again. Not
       inside a caller's transaction (nothing would commit before the next claim).
    """
    from django.conf import settings

    budget = settings.ENGINE_INLINE_STEPS
    if transaction.get_connection().in_atomic_block:
        budget = 0
    first, outbox_id = None, None
    while True:
        held: list[Outbox] = []
        claimed = False
        try:
            with outbox.holding(RUN_STEP, held) if budget > 0 else nullcontext():
                claimed, verdict = _run_claimed(step_id, worker, outbox_id)
        finally:
            if outbox_id is not None and not claimed:
                outbox.publish([outbox_id])  # not taken here: any worker may have it
        first = verdict if first is None else first
        if not held:
            return first
        budget -= 1
        if len(held) > 1:
            outbox.send(held[1:])
        step_id, outbox_id = held[0].kwargs["step_id"], held[0].pk


def step_work(step: Step, traceparent: str):
    """What an executor gets for one attempt of ``step``."""
    from rollbacks.executors import StepWork

    return StepWork(
        kind=step.kind,
        spec=step.spec,
        idempotency_key=step.idempotency_key,
        timeout_s=step.timeout_s,
        traceparent=traceparent,
        before=step.forward_action.before,
        after=step.forward_action.after,
    )


def _run_claimed(step_id: int, worker: str, outbox_id: int | None) -> tuple[bool, str]:
    """(claimed, what happened) for one step: claim, execute, record."""
    from rollbacks.executors import ExecutorError

    claimed = _claim(step_id, worker, outbox_id)
    if claimed is None:
        return False, "not claimable"
    step, attempt = claimed
    keeper = _LeaseKeeper(step)
    keeper.start()
    try:
        with tracer.start_as_current_span(
            f"compensate {step.system.slug}", context=_traceparent(step.rollback.trace_id)
        ):
            headers: dict[str, str] = {}
            inject(headers)
            work = step_work(step, headers.get("traceparent", ""))
            try:
                result = _executor_for(step, attempt).execute(work)
            except ExecutorError as exc:
                outcome: dict[str, Any] = {
                    "ok": False,
                    "error": str(exc),
                    "permanent": exc.permanent,
                }
            except Exception as exc:  # a bug or an unexpected driver error: never lose the step
                log.exception("step %s: unexpected error", step.pk)
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "permanent": False}
            else:
                outcome = {"ok": True, "output": result.output}
            # Outside the handlers above: an error while recording (or after its commit) is
            # not the executor's, and must not record the attempt a second time.
            return True, _record(step, attempt, **outcome)
    finally:
        keeper.stopped.set()
        keeper.join(timeout=5)


def _record(
    step: Step,
    attempt: Attempt,
    *,
    ok: bool,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
) -> str:
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=step.rollback_id)
        verdict = record_locked(
            rollback, step, attempt, ok=ok, output=output, error=error, permanent=permanent
        )
        if verdict != "refused":
            advance(rollback)
    return verdict


def record_locked(
    rollback: Rollback,
    step: Step,
    attempt: Attempt,
    *,
    ok: bool,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
) -> str:
    """``_record`` inside the caller's transaction, holding ``rollback``'s row lock; the
    caller runs ``advance`` afterwards (once per rollback when it records several steps)."""
    now = timezone.now()
    mine = Step.objects.filter(pk=step.pk, fencing_token=attempt.fencing_token, state=S.RUNNING)
    if ok:
        outcome, fields, verdict = (
            Attempt.Outcome.SUCCEEDED,
            {
                "state": S.SUCCEEDED,
                "finished_at": now,
                "output": output or {},
                "last_error": "",
            },
            "succeeded",
        )
    elif not permanent and step.retryable and step.attempts < step.max_attempts:
        retry_at = step.next_attempt_at = now + _backoff(step)
        outcome, fields, verdict = (
            Attempt.Outcome.TRANSIENT,
            {"state": S.RETRY_WAIT, "next_attempt_at": retry_at, "last_error": error},
            "will retry",
        )
    else:
        why = (
            "permanent error"
            if permanent
            else ("not retryable" if not step.retryable else f"{step.attempts} attempts used")
        )
        outcome = Attempt.Outcome.PERMANENT if permanent else Attempt.Outcome.TRANSIENT
        fields, verdict = (
            {"state": S.FAILED, "last_error": f"{error} ({why}; waiting for a human)"},
            "failed",
        )
    if not mine.update(lease_expires_at=None, **fields):
        # Our lease expired and the step was handed to someone else: a zombie's answer.
        Attempt.objects.filter(pk=attempt.pk).update(
            outcome=Attempt.Outcome.REFUSED, finished_at=now, error=error, output=output or {}
        )
        ledger.record(
            actor="worker",
            action="step.attempt.refused",
            subject=step,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            outcome="refused",
            payload={
                "attempt": attempt.number,
                "fencing_token": attempt.fencing_token,
                "is_drill": rollback.is_drill,
            },
        )
        return "refused"
    Attempt.objects.filter(pk=attempt.pk).update(
        outcome=outcome, finished_at=now, error=error, output=output or {}
    )
    record_attempt_entry(
        rollback, step, attempt, verdict, output=output, error=error, permanent=permanent
    )
    if fields["state"] == S.RETRY_WAIT:
        _dispatch_due([(step.pk, fields["next_attempt_at"])])
    if rollback.is_terminal:  # aborted while this attempt ran: its effect still counts
        write_summary(rollback)
    return verdict


def record_attempt_entry(
    rollback: Rollback,
    step: Step,
    attempt: Attempt,
    verdict: str,
    *,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
) -> None:
    """The ledger entry of an attempt's result (``step.attempt.succeeded`` / ``.failed``)."""
    ok = verdict == "succeeded"
    ledger.record(
        actor="worker",
        action=f"step.attempt.{'succeeded' if ok else 'failed'}",
        subject=step,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        outcome="ok" if ok else "failed",
        reason=error,
        payload={
            "attempt": attempt.number,
            "verdict": verdict,
            "output": output or {},
            "permanent": permanent,
            "is_drill": rollback.is_drill,
        },
    )


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
            rollback = _locked(step.rollback)
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
                _dispatch(Step.objects.filter(pk=step.pk))
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
            _dispatch(Step.objects.filter(pk__in=ids))
    return len(ids)
