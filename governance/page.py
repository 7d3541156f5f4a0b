"""What governance adds to the operator's pages: the policy decision, the approvals, the
approval panel, break-glass and its reviews, and stage gates.

The rollback page's parts are live panels (``governance/panels.py``, declared in
``settings.UNWIND_ROLLBACK_PANELS``), which read ``page_context`` once per request; the lists
call ``annotate_rollbacks`` through ``import_module`` (imports flow governance → rollbacks).
Everything here reads in a fixed number of queries, whatever the number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    prefetch_related_objects,
)
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from governance import forms, permissions
from governance.models import Approval, BreakGlass, BreakGlassReview, PolicyDecision, StageGate
from governance.policies import Requirements
from governance.services import APPROVER_ROLES, approval_shortfall
from rollbacks.models import Rollback
from rollbacks.permissions import permitted

R = Rollback.State

# What the rollback page's own query should join for governance (``select_related``), so
# that the policy decision and a break-glass cost no query of their own.
ROLLBACK_RELATED = ("policy_decision", "break_glass__used_by")


@dataclass
class BlastRadius:
    """What a rollback will touch: the approver reads it before deciding."""

    systems: list[Any]
    teams: list[str]
    tiers: list[int]
    steps: int
    manual_steps: int
    stages: int


def blast_radius(stages: list[Any]) -> BlastRadius:
    """From the page's stages (``stage.step_list`` with ``step.system`` and its team loaded)."""
    steps = [step for stage in stages for step in stage.step_list]
    systems = {step.system.pk: step.system for step in steps}
    return BlastRadius(
        systems=sorted(systems.values(), key=lambda s: (s.tier, s.slug)),
        teams=sorted({s.team.name for s in systems.values()}),
        tiers=sorted({s.tier for s in systems.values()}),
        steps=len(steps),
        manual_steps=sum(1 for step in steps if step.is_manual),
        stages=len(stages),
    )


def _decision(rollback: Rollback) -> PolicyDecision | None:
    """The rollback's policy decision (joined by ``ROLLBACK_RELATED``), or None."""
    try:
        return rollback.policy_decision
    except PolicyDecision.DoesNotExist:
        return None


def _break_glass(rollback: Rollback) -> BreakGlass | None:
    """Its break-glass (joined by ``ROLLBACK_RELATED``) with its reviews, or None."""
    try:
        break_glass = rollback.break_glass
    except BreakGlass.DoesNotExist:
        return None
    prefetch_related_objects([break_glass], _reviews_prefetch())
    return break_glass


def _mark_approvals(approvals: list[Approval]) -> None:
    now = timezone.now()
    for approval in approvals:
        approval.is_expired = approval.expires_at is not None and approval.expires_at <= now
        approval.counts = (
            approval.decision == Approval.Decision.APPROVE
            and approval.revoked_at is None
            and not approval.is_expired
        )


def _gates(
    rollback: Rollback, stages: list[Any], req: Requirements, bound: tuple[int, Any] | None
) -> list[StageGate]:
    """Attach to each stage ``gate_tiers`` (the gated tiers it touches), its ``gate`` (once
    the engine stopped there), ``is_waiting_at_gate`` and the form that opens it."""
    for stage in stages:
        stage.gate_tiers, stage.gate, stage.is_waiting_at_gate = [], None, False
    if not req.gate_tiers:
        return []
    gates = {
        g.stage_index: g
        for g in StageGate.objects.filter(rollback=rollback).select_related("opened_by")
    }
    for stage in stages:
        tiers = {step.system.tier for step in stage.step_list} & set(req.gate_tiers)
        stage.gate_tiers = sorted(tiers)
        stage.gate = gates.get(stage.index)
        stage.is_waiting_at_gate = (
            stage.gate is not None
            and stage.gate.opened_at is None
            and stage.state == "pending"
            and rollback.state in (R.RUNNING, R.PAUSED)
        )
        stage.gate_form = bound[1] if bound and bound[0] == stage.index else forms.GateForm()
    return list(gates.values())


def page_context(
    rollback: Rollback, user: Any, stages: list[Any], forms_: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``gov`` context of the rollback page.

    1. The policy decision made when the rollback was submitted (which policies, why, what
       they require together).
    2. The approvals so far, each marked as counting or not (rejected, revoked, expired), and
       what is still missing while the rollback waits for approval.
    3. Whether this user may approve (and why not), for the approval panel; whether they may
       break the glass; the break-glass and its reviews; the stage gates.
    4. A fingerprint of all of it, so that the page's poll re-renders when it changes.
    """
    forms_ = forms_ or {}
    decision = _decision(rollback)
    req = Requirements.from_dict(decision.requirements) if decision else Requirements()
    approvals: list[Approval] = []
    if req.approvals:  # without a required approval, nobody can have approved it
        approvals = list(rollback.approvals.select_related("approver").order_by("created_at"))
        _mark_approvals(approvals)
    is_awaiting = rollback.state == R.AWAITING_APPROVAL
    shortfall = ""
    if req.approvals and rollback.state in (R.AWAITING_APPROVAL, R.APPROVED):
        shortfall = approval_shortfall(rollback, req)
    mine = next((a for a in approvals if a.approver_id == user.pk and a.revoked_at is None), None)
    break_glass = _break_glass(rollback)
    gates = _gates(rollback, stages, req, forms_.get("gate"))
    has_waiting_gate = any(getattr(stage, "is_waiting_at_gate", False) for stage in stages)

    may_approve, why_not = False, ""
    if is_awaiting or has_waiting_gate:
        may_approve, why_not = permissions.can_approve(rollback, user, req)
    may_break_glass = False
    if is_awaiting and break_glass is None:
        may_break_glass = permissions.can_break_glass(rollback, user)[0]
    may_review, why_no_review = False, ""
    if break_glass is not None:
        may_review, why_no_review = permissions.can_review_break_glass(break_glass, user)

    fingerprint = (
        [(a.pk, a.revoked_at, a.counts) for a in approvals],
        [(g.stage_index, g.opened_at) for g in gates],
        break_glass and [r.pk for r in break_glass.reviews.all()],
        shortfall,
    )
    return {
        "decision": decision,
        "req": req,
        "policies": [(name, req.reasons.get(name, "")) for name in req.policies],
        "approvals": approvals,
        "live_count": sum(1 for a in approvals if a.counts),
        "missing_count": max(0, req.approvals - sum(1 for a in approvals if a.counts)),
        "shortfall": shortfall,
        "is_awaiting": is_awaiting,
        "my_approval": mine,
        "can_approve": may_approve and is_awaiting and mine is None,
        "can_revoke": mine is not None
        and mine.counts
        and rollback.state in (R.AWAITING_APPROVAL, R.APPROVED),
        "can_open_gate": may_approve and has_waiting_gate,
        "why_not": why_not,
        "blast": blast_radius(stages) if is_awaiting else None,
        "approval_form": forms_.get("approval")
        or forms.ApprovalForm(attestations=req.attestations),
        "revoke_form": forms_.get("revoke") or forms.RevokeForm(),
        "can_break_glass": may_break_glass,
        "break_glass_form": forms_.get("break_glass") or forms.BreakGlassForm(),
        "break_glass": break_glass,
        "reviews_needed": permissions.REVIEWS_NEEDED,
        "can_review": may_review,
        "why_no_review": why_no_review,
        "review_form": forms_.get("review") or forms.ReviewForm(),
        "has_gates": bool(req.gate_tiers),
        "fingerprint": repr(fingerprint),
    }


def _reviews_prefetch() -> Prefetch:
    return Prefetch(
        "reviews",
        queryset=BreakGlassReview.objects.select_related("reviewer").order_by("reviewed_at"),
    )


def render_rollback_page(
    request: HttpRequest, rollback: Rollback, *, status: int = 200, **forms_: Any
) -> HttpResponse:
    """The whole rollback page, with a bound governance form showing its errors."""
    from rollbacks import views

    return views.rollback_page(request, rollback, status=status, panel_forms=forms_)


# Lists --------------------------------------------------------------------------------------


def annotate_rollbacks(queryset: QuerySet) -> QuerySet:
    """``has_break_glass`` on each rollback of a list, in the list's own query."""
    return queryset.annotate(
        has_break_glass=Exists(BreakGlass.objects.filter(rollback=OuterRef("pk")))
    )


def _live_approvals_count() -> Coalesce:
    now = timezone.now()
    live = (
        Approval.objects.filter(
            rollback=OuterRef("pk"), decision=Approval.Decision.APPROVE, revoked_at__isnull=True
        )
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .order_by()
        .values("rollback")
    )
    return Coalesce(
        Subquery(live.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
        Value(0),
    )


def _group_names(user: Any) -> set[str]:
    """The user's group names, read once per request (the navigation and the page both ask)."""
    if not hasattr(user, "_governance_groups"):
        user._governance_groups = set(user.groups.values_list("name", flat=True))
    return user._governance_groups


def is_approver(user: Any) -> bool:
    """The approver (or admin) role, as ``services.APPROVER_ROLES``."""
    if not getattr(user, "is_authenticated", False):
        return False
    return user.is_superuser or bool(_group_names(user) & set(APPROVER_ROLES))


def pending_for(user: Any) -> list[Rollback]:
    """Rollbacks awaiting approval that this user could approve now, oldest first.

    The same rules as ``services._eligibility_problem`` (approver role, the rollback's teams,
    never the requester, the policy's eligible groups), in three queries however many
    rollbacks wait; those the user has already decided on are left out.
    """
    if not is_approver(user):
        return []
    if hasattr(user, "_governance_pending"):  # the navigation's count asked already
        return user._governance_pending
    groups = _group_names(user)
    decided = Approval.objects.filter(
        rollback=OuterRef("pk"), approver=user, revoked_at__isnull=True
    )
    rollbacks = (
        permitted(user, "approve_rollback", Rollback.objects.visible_to(user))
        .filter(state=R.AWAITING_APPROVAL)
        .exclude(requested_by=user)
        .exclude(Exists(decided))
        .select_related("run", "requested_by", "policy_decision")
        .annotate(live_count=_live_approvals_count())
        .order_by("created_at", "pk")
    )
    pending = []
    for rollback in rollbacks:
        decision = _decision(rollback)
        req = Requirements.from_dict(decision.requirements) if decision else Requirements()
        if req.eligible_groups and not user.is_superuser and not groups & set(req.eligible_groups):
            continue
        rollback.req = req
        rollback.decision = decision
        pending.append(rollback)
    user._governance_pending = pending
    return pending
