"""The engine's governance hooks (``settings.UNWIND_GOVERNANCE = "governance.gate"``).

The engine calls these inside its own transactions, with the rollback's row locked.
"""

from __future__ import annotations

from typing import Any

import ledger.services as ledger
from governance import policies
from governance.models import BreakGlass, PolicyDecision, StageGate
from rollbacks.models import Rollback, Stage


def submit(rollback: Rollback, actor: Any) -> tuple[bool, str]:
    """Decide what the policies require of a newly planned rollback; record it."""
    req, why = policies.evaluate(rollback)
    decision = PolicyDecision.objects.create(
        rollback=rollback,
        trigger_kind=rollback.trigger,
        requirements=req.as_dict(),
        explanation=why,
    )
    decision.policies.set(policies_by_name(req.policies))
    ledger.record(
        actor=actor,
        action="policy.applied",
        subject=rollback,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        reason=why,
        payload=req.as_dict() | {"is_drill": rollback.is_drill},
    )
    return req.approvals > 0, why


def resubmit(rollback: Rollback, actor: Any) -> tuple[bool, str]:
    """A finished rollback's plan changed (a follow-up stage from reconciliation): decide
    again over its steps as they are now. Approvals given before approved the plan as it
    was, so they are revoked (ledgered with the decision); the new plan needs its own."""
    from django.utils import timezone

    from governance.services import live_approvals

    req, why = policies.evaluate(rollback)
    decision, _ = PolicyDecision.objects.update_or_create(
        rollback=rollback,
        defaults={
            "trigger_kind": rollback.trigger,
            "requirements": req.as_dict(),
            "explanation": why,
        },
    )
    decision.policies.set(policies_by_name(req.policies))
    superseded = list(live_approvals(rollback).values_list("pk", flat=True))
    live_approvals(rollback).update(
        revoked_at=timezone.now(), revoked_reason="superseded: the plan gained a follow-up stage"
    )
    ledger.record(
        actor=actor,
        action="policy.applied",
        subject=rollback,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        reason=why,
        payload=req.as_dict()
        | {
            "resubmitted": True,
            "superseded_approvals": superseded,
            "is_drill": rollback.is_drill,
        },
    )
    return req.approvals > 0, why


def policies_by_name(names: list[str]):
    from governance.models import ApprovalPolicy

    return ApprovalPolicy.objects.filter(name__in=names)


def requirements(rollback: Rollback) -> policies.Requirements:
    decision = PolicyDecision.objects.filter(rollback=rollback).first()
    return (
        policies.Requirements.from_dict(decision.requirements)
        if decision
        else policies.Requirements()
    )


def may_start(rollback: Rollback) -> tuple[bool, str]:
    """Do the approvals still stand? (An approval can expire or be revoked after release.)"""
    from governance.services import approval_shortfall

    if BreakGlass.objects.filter(rollback=rollback).exists():
        return True, "break-glass"
    shortfall = approval_shortfall(rollback, requirements(rollback))
    return (not shortfall, shortfall)


def may_continue(rollback: Rollback) -> str:
    """Asked by the workers before each step (refuse in rollbacks/engine/worker.py): '' when it may go on.

    A rollback an alert started on a policy's word alone (no approval, no break-glass) goes
    on only while the active policies still let an alert start it without approval.
    """
    if rollback.trigger != "alert":
        return ""
    decision = PolicyDecision.objects.filter(rollback=rollback).first()
    if decision is None or decision.requirements.get("approvals", 0) > 0:
        return ""  # approved by people, whose approvals were checked when it started
    if BreakGlass.objects.filter(rollback=rollback).exists():
        return ""
    req, _ = policies.evaluate(rollback)
    if req.approvals or not req.auto_start:
        return "the approval policies no longer let an alert start it without approval"
    return ""


def stage_is_open(rollback: Rollback, stage: Stage) -> bool:
    """A stage touching a gated tier waits until an approver opens its gate."""
    req = requirements(rollback)
    if not req.gate_tiers or BreakGlass.objects.filter(rollback=rollback).exists():
        return True
    tiers = set(stage.steps.values_list("system__tier", flat=True))
    if not tiers & set(req.gate_tiers):
        return True
    gate, created = StageGate.objects.get_or_create(rollback=rollback, stage_index=stage.index)
    if created:
        ledger.record(
            actor="worker",
            action="stage.gated",
            subject=stage,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=f"stage {stage.index} touches tier {'/'.join(map(str, sorted(tiers & set(req.gate_tiers))))}",
            payload={"is_drill": rollback.is_drill},
        )
    return gate.opened_at is not None
