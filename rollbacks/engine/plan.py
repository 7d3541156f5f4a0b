"""Planning: a rollback of a run, a step per completed forward action, in stages."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from django.db import transaction

import ledger.services as ledger
from rollbacks import access, planning, services
from rollbacks.engine.base import EngineError, drill_hooks, governance, transition_rollback
from rollbacks.models import (
    Contract,
    DependencyMap,
    ForwardAction,
    ProcessRun,
    Rollback,
    Stage,
    Step,
)
from rollbacks.permissions import grant_rollback

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State


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
        submit(rollback, actor)
    return rollback


def submit(rollback: Rollback, actor: Any) -> None:
    """Draft → awaiting approval, or → approved when no approval policy requires one."""
    gov = governance()
    needs, why = gov.submit(rollback, actor) if gov else (False, "no approval policy is configured")
    target = R.AWAITING_APPROVAL if needs else R.APPROVED
    transition_rollback(
        rollback, (R.DRAFT,), target, actor=actor, action="rollback.submitted", reason=why
    )
