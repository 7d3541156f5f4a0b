"""Governance writes: approve, reject, revoke, open a stage gate, break-glass and its
reviews, incident grants. Each is one transaction with its ledger entry; each checks who may
do it here, not only in views, because the API calls these too."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

import ledger.services as ledger
from governance.gate import requirements
from governance.models import Approval, BreakGlass, BreakGlassReview, IncidentGrant, StageGate
from governance.policies import Requirements
from rollbacks import access, engine
from rollbacks.engine import EngineError
from rollbacks.models import Rollback

APPROVER_ROLES = ("approver", "admin")
REVIEWS_NEEDED = 2  # a break-glass is reviewed by two people other than who used it


def live_approvals(rollback: Rollback):
    """Approvals that still count: approve decisions, not revoked, not expired."""
    now = timezone.now()
    return rollback.approvals.filter(
        decision=Approval.Decision.APPROVE, revoked_at__isnull=True
    ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def rollback_teams(rollback: Rollback) -> dict[str, str]:
    """team group name -> team name, for the systems a rollback touches."""
    rows = rollback.steps.values_list("system__team__group__name", "system__team__name").distinct()
    return dict(rows)


def approval_shortfall(rollback: Rollback, req: Requirements) -> str:
    """'' when the approvals satisfy the requirements, else what is missing."""
    if not req.approvals:
        return ""  # nothing to count (and no team rule: it applies to approvals)
    approvals = list(live_approvals(rollback).select_related("approver"))
    if len(approvals) < req.approvals:
        return (
            f"{len(approvals)} of {req.approvals} approvals (expired or revoked ones do not count)"
        )
    if req.approver_from_each_team and req.approvals:
        approver_groups = {
            a.pk: set(a.approver.groups.values_list("name", flat=True)) for a in approvals
        }
        missing = [
            name
            for group, name in rollback_teams(rollback).items()
            if not any(group in groups for groups in approver_groups.values())
        ]
        if missing:
            return "no approver yet from " + ", ".join(sorted(missing))
    return ""


def _eligibility_problem(rollback: Rollback, user: Any, req: Requirements) -> str:
    if not access.has_role(user, *APPROVER_ROLES):
        return "only an approver may approve or reject"
    if not access.holds(user, "approve_rollback", rollback):
        return "you are not in a team this rollback touches"
    if rollback.requested_by_id == user.pk:
        return "four-eyes: the requester never approves their own rollback"
    if req.eligible_groups == []:
        return "nobody may approve: the matching policies' eligible groups do not overlap"
    if (
        req.eligible_groups
        and not user.is_superuser
        and not user.groups.filter(name__in=req.eligible_groups).exists()
    ):
        return "the policy needs an approver from " + ", ".join(req.eligible_groups)
    return ""


def _check_eligible(rollback: Rollback, user: Any, action: str) -> Requirements:
    req = requirements(rollback)
    problem = _eligibility_problem(rollback, user, req)
    if problem:
        access.refuse(
            actor=user, action=action, subject=rollback, rollback_id=rollback.pk, why=problem
        )
    return req


def _locked_awaiting_approval(rollback: Rollback) -> Rollback:
    """The rollback's row, locked; refused unless it awaits approval. Concurrent decisions
    serialise here."""
    rollback = Rollback.objects.select_for_update().get(pk=rollback.pk)
    if rollback.state != Rollback.State.AWAITING_APPROVAL:
        raise EngineError(
            {
                "state": f"rollback #{rollback.pk} is {rollback.get_state_display()}: it does not await approval"
            }
        )
    return rollback


def rollback_approve(
    *, rollback: Rollback, approver: Any, comment: str, attestations: dict[str, str] | None = None
) -> Approval:
    """Record an approval; release the rollback once the policy is satisfied.

    Concurrent approvals serialise on the rollback's row lock, so the policy's count is
    reached exactly once and the release happens once.
    """
    req = _check_eligible(rollback, approver, "approval.give")
    comment = (comment or "").strip()
    if not comment:
        raise EngineError({"comment": "say why you approve (what you checked)"})
    attestations = {k: (v or "").strip() for k, v in (attestations or {}).items()}
    missing = [a for a in req.attestations if not attestations.get(a["key"])]
    if missing:
        # The key too: it is what an API client (`unwind approve --attest pii=…`) sends.
        raise EngineError(
            {"attestations": [f"tick and comment: {a['label']} (key {a['key']})" for a in missing]}
        )
    with transaction.atomic():
        rollback = _locked_awaiting_approval(rollback)
        if rollback.approvals.filter(approver=approver, revoked_at__isnull=True).exists():
            raise EngineError({"approver": "you have already decided on this rollback"})
        now = timezone.now()
        approval = Approval.objects.create(
            rollback=rollback,
            approver=approver,
            decision=Approval.Decision.APPROVE,
            comment=comment,
            attestations={a["key"]: attestations[a["key"]] for a in req.attestations},
            expires_at=now + timedelta(seconds=req.expires_after_s)
            if req.expires_after_s
            else None,
        )
        ledger.record(
            actor=approver,
            action="approval.given",
            subject=rollback,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=comment,
            payload={
                "approval": approval.pk,
                "attestations": approval.attestations,
                "expires_at": approval.expires_at.isoformat() if approval.expires_at else None,
                "is_drill": rollback.is_drill,
            },
        )
        if not approval_shortfall(rollback, req):
            names = ", ".join(
                a.approver.get_username()
                for a in live_approvals(rollback).select_related("approver")
            )
            engine.rollback_release(
                rollback=rollback, actor=approver, reason=f"approved by {names}"
            )
    return approval


def rollback_reject(*, rollback: Rollback, approver: Any, comment: str) -> Approval:
    """One eligible approver's no ends the rollback (aborted, with the reason)."""
    _check_eligible(rollback, approver, "approval.reject")
    comment = (comment or "").strip()
    if not comment:
        raise EngineError({"comment": "say why you reject it"})
    with transaction.atomic():
        rollback = _locked_awaiting_approval(rollback)
        approval = Approval.objects.create(
            rollback=rollback, approver=approver, decision=Approval.Decision.REJECT, comment=comment
        )
        engine.rollback_reject(
            rollback=rollback,
            actor=approver,
            reason=f"rejected by {approver.get_username()}: {comment}",
        )
    return approval


def approval_revoke(*, approval: Approval, actor: Any, reason: str) -> Approval:
    """The approver (or an admin) withdraws an approval; a rollback not yet started goes
    back to awaiting approval when the rest no longer satisfy the policy."""
    if actor != approval.approver and not access.has_role(actor, "admin"):
        access.refuse(
            actor=actor,
            action="approval.revoke",
            subject=approval.rollback,
            rollback_id=approval.rollback_id,
            why="only the approver or an admin may revoke an approval",
        )
    if not (reason or "").strip():
        raise EngineError({"reason": "say why the approval is revoked"})
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=approval.rollback_id)
        updated = Approval.objects.filter(pk=approval.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_reason=reason
        )
        if not updated:
            raise EngineError({"approval": "this approval was already revoked"})
        ledger.record(
            actor=actor,
            action="approval.revoked",
            subject=rollback,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=reason,
            payload={"approval": approval.pk, "is_drill": rollback.is_drill},
        )
        shortfall = approval_shortfall(rollback, requirements(rollback))
        if rollback.state == Rollback.State.APPROVED and shortfall:
            engine.rollback_require_approval(rollback=rollback, actor=actor, reason=shortfall)
    approval.refresh_from_db()
    return approval


def gate_open(*, rollback: Rollback, stage_index: int, actor: Any, comment: str) -> StageGate:
    """An approver lets a critical stage start."""
    req = requirements(rollback)
    problem = _eligibility_problem(rollback, actor, req)
    if problem:
        access.refuse(
            actor=actor,
            action="stage.gate_open",
            subject=rollback,
            rollback_id=rollback.pk,
            why=problem,
        )
    if not (comment or "").strip():
        raise EngineError({"comment": "say what you checked before opening the gate"})
    with transaction.atomic():
        locked = Rollback.objects.select_for_update().get(pk=rollback.pk)
        updated = StageGate.objects.filter(
            rollback=locked, stage_index=stage_index, opened_at__isnull=True
        ).update(opened_at=timezone.now(), opened_by=actor, comment=comment)
        if not updated:
            raise EngineError({"stage": f"stage {stage_index} is not waiting at a gate"})
        ledger.record(
            actor=actor,
            action="stage.gate_opened",
            subject=locked,
            rollback_id=locked.pk,
            trace_id=locked.trace_id,
            reason=comment,
            payload={"stage": stage_index, "is_drill": locked.is_drill},
        )
        engine.advance(locked)
    return StageGate.objects.get(rollback=rollback, stage_index=stage_index)


def can_break_glass(user: Any) -> bool:
    return getattr(user, "is_authenticated", False) and user.has_perm("governance.use_break_glass")


def rollback_break_glass(*, rollback: Rollback, actor: Any, reason: str) -> Rollback:
    """Start without approval. Flagged everywhere; two other people must review it."""
    if not can_break_glass(actor) or not access.can_operate(actor, rollback):
        access.refuse(
            actor=actor,
            action="rollback.break_glass",
            subject=rollback,
            rollback_id=rollback.pk,
            why="break-glass needs the break-glass right and the operator role in the rollback's teams",
        )
    reason = (reason or "").strip()
    if len(reason) < 10:
        raise EngineError(
            {"reason": "type the reason for breaking the glass (at least 10 characters)"}
        )
    with transaction.atomic():
        locked = Rollback.objects.select_for_update().get(pk=rollback.pk)
        if locked.state != Rollback.State.AWAITING_APPROVAL:
            raise EngineError(
                {
                    "state": f"rollback #{locked.pk} is {locked.get_state_display()}: "
                    "break-glass is for a rollback awaiting approval"
                }
            )
        BreakGlass.objects.create(rollback=locked, used_by=actor, reason=reason)
        ledger.record(
            actor=actor,
            action="rollback.break_glass",
            subject=locked,
            rollback_id=locked.pk,
            trace_id=locked.trace_id,
            reason=reason,
            outcome="ok",
            payload={"is_drill": locked.is_drill},
        )
        engine.rollback_release(rollback=locked, actor=actor, reason=f"break-glass: {reason}")
    return engine.rollback_start(rollback=locked, actor=actor)


def break_glass_review(*, rollback: Rollback, reviewer: Any, comment: str) -> BreakGlassReview:
    """One of the two reviews a break-glass needs, by someone other than who used it."""
    bg = BreakGlass.objects.filter(rollback=rollback).first()
    if bg is None:
        raise EngineError({"rollback": "this rollback did not break the glass"})
    if (
        reviewer.pk == bg.used_by_id
        or not access.has_role(reviewer, "approver", "admin", "auditor")
        or not Rollback.objects.visible_to(reviewer).filter(pk=rollback.pk).exists()
    ):
        access.refuse(
            actor=reviewer,
            action="break_glass.review",
            subject=rollback,
            rollback_id=rollback.pk,
            why="a break-glass is reviewed by an approver, auditor or admin of its teams, "
            "other than who used it",
        )
    if not (comment or "").strip():
        raise EngineError({"comment": "say what the review found"})
    with transaction.atomic():
        BreakGlass.objects.select_for_update().get(pk=bg.pk)  # two reviewers at once: one at a time
        if bg.reviews.filter(reviewer=reviewer).exists():
            raise EngineError({"reviewer": "you have already reviewed it"})
        if bg.reviews.count() >= REVIEWS_NEEDED:
            raise EngineError({"rollback": f"it already has the {REVIEWS_NEEDED} reviews it needs"})
        review = BreakGlassReview.objects.create(break_glass=bg, reviewer=reviewer, comment=comment)
        ledger.record(
            actor=reviewer,
            action="break_glass.reviewed",
            subject=rollback,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=comment,
            payload={"reviews": bg.reviews.count(), "is_drill": rollback.is_drill},
        )
    return review


def incident_grant(
    *, user: Any, team_group: Group, actor: Any, reason: str, hours: float
) -> IncidentGrant:
    """Temporary membership of a team, for an incident; expires by itself."""
    if not access.has_role(actor, "admin"):
        access.refuse(
            actor=actor,
            action="grant.create",
            subject=None,
            subject_type="grant",
            why="only an admin grants incident access",
        )
    if not (reason or "").strip():
        raise EngineError({"reason": "say which incident this is for"})
    if not 0 < hours <= 72:
        raise EngineError({"hours": "a grant lasts more than 0 and at most 72 hours"})
    with transaction.atomic():
        grant = IncidentGrant.objects.create(
            user=user,
            team_group=team_group,
            reason=reason,
            granted_by=actor,
            expires_at=timezone.now() + timedelta(hours=hours),
        )
        ledger.record(
            actor=actor,
            action="grant.created",
            subject=grant,
            reason=reason,
            payload={"user": user.get_username(), "team": team_group.name, "hours": hours},
        )
    return grant


def require_not_auditor(user: Any) -> None:
    if access.has_role(user, "auditor") and not user.is_superuser:
        raise PermissionDenied("auditors change nothing")
