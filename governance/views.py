"""Governance pages and the rollback page's governance forms: my pending approvals, approve,
reject, withdraw an approval, break the glass, review a break-glass, open a stage gate.

Each POST fetches the rollback through ``access`` (404 for outsiders), refuses (403,
ledgered) whoever may not act before reading the form, validates the form (400 with the
errors next to the fields, nothing written), calls the service, and goes back to the
rollback page with a message.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from governance import forms, page, permissions, services
from governance.gate import requirements
from governance.models import Approval, BreakGlass
from rollbacks import access
from rollbacks.engine import EngineError
from rollbacks.models import Rollback, Stage

# Errors about the rollback as a whole, not a field the user can correct: the panel that
# would show them may be gone (the rollback no longer awaits approval), so they become a
# message on the page instead.
NOT_A_FIELD = ("state", "approver", "reviewer", "stage", "rollback", "approval")


@login_required
def approvals_pending(request: HttpRequest) -> HttpResponse:
    """Rollbacks awaiting approval that I could approve, oldest first."""
    is_approver = page.is_approver(request.user)
    return render(
        request,
        "governance/approvals_pending.html",
        {"rollbacks": page.pending_for(request.user), "is_approver": is_approver},
    )


def approvals_count(request: HttpRequest) -> HttpResponse:
    """The navigation's badge: how many rollbacks I could approve now (loaded by htmx, so
    that pages do not pay for it in queries; empty for who does not approve)."""
    if not request.user.is_authenticated:
        # A session that expired under an open page: swap nothing rather than the login page.
        return HttpResponse(status=204)
    pending = len(page.pending_for(request.user)) if page.is_approver(request.user) else 0
    return render(
        request,
        "governance/_nav.html#approvals-count",
        {"pending": pending, "is_fragment": True},
    )


def _refuse_unless(allowed: tuple[bool, str], *, request, rollback, action: str) -> None:
    ok, why = allowed
    if not ok:
        access.refuse(
            actor=request.user, action=action, subject=rollback, rollback_id=rollback.pk, why=why
        )


def _not_awaiting(request: HttpRequest, rollback: Rollback) -> HttpResponse | None:
    """The panel is gone once the rollback no longer awaits approval: say so on the page
    rather than answer a form the user cannot see."""
    if rollback.state == Rollback.State.AWAITING_APPROVAL:
        return None
    messages.error(
        request,
        f"Rollback #{rollback.pk} is {rollback.get_state_display()}: it does not await approval.",
    )
    return redirect("rollback", pk=rollback.pk)


def _done(request: HttpRequest, rollback: Rollback, text: str) -> HttpResponse:
    messages.success(request, text)
    return redirect("rollback", pk=rollback.pk)


def _service_failed(
    request: HttpRequest, rollback: Rollback, exc: ValidationError, form: Any, key: str
) -> HttpResponse:
    """A field error goes next to its field (400); an error about the rollback's state
    goes back to the page as a message."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {}
    if errors and set(errors) <= set(NOT_A_FIELD):
        messages.error(request, " ".join(exc.messages))
        return redirect("rollback", pk=rollback.pk)
    form.add_service_error(exc)
    bound = (form.stage_index, form) if key == "gate" else form
    return page.render_rollback_page(request, rollback, status=400, **{key: bound})


@login_required
@require_POST
def rollback_approve(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve a rollback with a comment and the policy's attestations."""
    rollback = access.get_rollback_for_user(request.user, pk)
    req = requirements(rollback)
    allowed = permissions.can_approve(rollback, request.user, req)
    _refuse_unless(allowed, request=request, rollback=rollback, action="approval.give")
    if answer := _not_awaiting(request, rollback):
        return answer
    form = forms.ApprovalForm(request.POST, attestations=req.attestations)
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, approval=form)
    try:
        services.rollback_approve(
            rollback=rollback,
            approver=request.user,
            comment=form.cleaned_data["comment"],
            attestations=form.attestations(),
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "approval")
    rollback.refresh_from_db()
    if rollback.state == Rollback.State.APPROVED:
        return _done(request, rollback, f"You approved rollback #{rollback.pk}: it may start.")
    shortfall = services.approval_shortfall(rollback, req)
    return _done(
        request, rollback, f"You approved rollback #{rollback.pk}. Still missing: {shortfall}."
    )


@login_required
@require_POST
def rollback_reject(request: HttpRequest, pk: int) -> HttpResponse:
    """Reject a rollback with a comment: it ends aborted."""
    rollback = access.get_rollback_for_user(request.user, pk)
    req = requirements(rollback)
    allowed = permissions.can_approve(rollback, request.user, req)
    _refuse_unless(allowed, request=request, rollback=rollback, action="approval.reject")
    if answer := _not_awaiting(request, rollback):
        return answer
    form = forms.ApprovalForm(request.POST, attestations=req.attestations, is_reject=True)
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, approval=form)
    try:
        services.rollback_reject(
            rollback=rollback, approver=request.user, comment=form.cleaned_data["comment"]
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "approval")
    return _done(request, rollback, f"You rejected rollback #{rollback.pk}: it is aborted.")


@login_required
@require_POST
def approval_revoke(request: HttpRequest, pk: int, approval_id: int) -> HttpResponse:
    """Withdraw an approval (its approver, or an admin)."""
    rollback = access.get_rollback_for_user(request.user, pk)
    approval = get_object_or_404(
        Approval.objects.select_related("approver", "rollback"), pk=approval_id, rollback=rollback
    )
    if request.user != approval.approver and not access.has_role(request.user, "admin"):
        access.refuse(
            actor=request.user,
            action="approval.revoke",
            subject=rollback,
            rollback_id=rollback.pk,
            why="only the approver or an admin may revoke an approval",
        )
    form = forms.RevokeForm(request.POST)
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, revoke=form)
    try:
        services.approval_revoke(
            approval=approval, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "revoke")
    return _done(request, rollback, f"Approval by {approval.approver.get_username()} withdrawn.")


@login_required
@require_POST
def rollback_break_glass(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a rollback awaiting approval without it, with a typed reason (break-glass)."""
    rollback = access.get_rollback_for_user(request.user, pk)
    allowed = permissions.can_break_glass(rollback, request.user)
    _refuse_unless(allowed, request=request, rollback=rollback, action="rollback.break_glass")
    if answer := _not_awaiting(request, rollback):
        return answer
    form = forms.BreakGlassForm(request.POST)
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, break_glass=form)
    try:
        services.rollback_break_glass(
            rollback=rollback, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "break_glass")
    return _done(
        request,
        rollback,
        f"Rollback #{rollback.pk} started under break-glass: two other people must review it.",
    )


@login_required
@require_POST
def break_glass_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Review a break-glass (an approver, auditor or admin other than who used it)."""
    rollback = access.get_rollback_for_user(request.user, pk)
    break_glass = get_object_or_404(
        BreakGlass.objects.prefetch_related("reviews"), rollback=rollback
    )
    allowed = permissions.can_review_break_glass(break_glass, request.user)
    _refuse_unless(allowed, request=request, rollback=rollback, action="break_glass.review")
    form = forms.ReviewForm(request.POST)
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, review=form)
    try:
        services.break_glass_review(
            rollback=rollback, reviewer=request.user, comment=form.cleaned_data["comment"]
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "review")
    return _done(
        request, rollback, f"Your review of the break-glass on #{rollback.pk} is recorded."
    )


@login_required
@require_POST
def gate_open(request: HttpRequest, pk: int, index: int) -> HttpResponse:
    """Open the gate before a stage that touches a gated tier."""
    rollback = access.get_rollback_for_user(request.user, pk)
    get_object_or_404(Stage, rollback=rollback, index=index)
    allowed = permissions.can_approve(rollback, request.user)
    _refuse_unless(allowed, request=request, rollback=rollback, action="stage.gate_open")
    form = forms.GateForm(request.POST)
    form.stage_index = index
    if not form.is_valid():
        return page.render_rollback_page(request, rollback, status=400, gate=(index, form))
    try:
        services.gate_open(
            rollback=rollback,
            stage_index=index,
            actor=request.user,
            comment=form.cleaned_data["comment"],
        )
    except EngineError as exc:
        return _service_failed(request, rollback, exc, form, "gate")
    return _done(request, rollback, f"Gate of stage {index} opened: the stage starts.")
