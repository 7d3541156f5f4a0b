"""The reconciliation panel of the rollback page and its three actions (plain POST forms
that answer with a redirect to the rollback page, so they work without JavaScript)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from reconcile import forms, services
from reconcile.models import Finding
from rollbacks import access

PAGE = "reconcile/findings_page.html"


def _back(request: HttpRequest, rollback_pk: int) -> HttpResponse:
    """Back where the form was: the reconciliation page (no JavaScript) or the rollback page,
    where the panel loads itself."""
    if request.POST.get("back") == "page":
        return redirect("reconcile-panel", pk=rollback_pk)
    return redirect(reverse("rollback", args=[rollback_pk]) + "#reconciliation")


def _error_text(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@login_required
@require_GET
def panel(request: HttpRequest, pk: int) -> HttpResponse:
    """The panel: loaded into the rollback page (htmx, and polled while checks run), or a
    page of its own without JavaScript."""
    rollback = access.get_rollback_for_user(request.user, pk)
    context = {
        "rollback": rollback,
        "rc": services.panel(rollback, request.user),
        "back": "rollback" if request.htmx else "page",
    }
    response = render(request, PAGE + "#panel" if request.htmx else PAGE, context)
    patch_vary_headers(response, ("HX-Request",))  # the page and its fragment share a URL
    return response


@login_required
@require_POST
def rerun(request: HttpRequest, pk: int) -> HttpResponse:
    rollback = access.get_rollback_for_user(request.user, pk)
    access.require_operator(request.user, rollback, "reconcile.request")
    try:
        services.request_reconciliation(rollback=rollback, actor=request.user)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"Reconciliation of rollback #{rollback.pk} queued.")
    return _back(request, rollback.pk)


@login_required
@require_POST
def dismiss(request: HttpRequest, pk: int, finding_id: int) -> HttpResponse:
    rollback = access.get_rollback_for_user(request.user, pk)
    finding = get_object_or_404(
        Finding.objects.select_related("rollback", "system"), pk=finding_id, rollback=rollback
    )
    access.require_operator(request.user, rollback, "reconcile.finding_dismiss")
    form = forms.DismissForm(request.POST)
    if not form.is_valid():
        messages.error(request, forms.errors_text(form))
        return _back(request, rollback.pk)
    try:
        services.finding_dismiss(
            finding=finding, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"Finding #{finding.pk} dismissed.")
    return _back(request, rollback.pk)


@login_required
@require_POST
def followup(request: HttpRequest, pk: int) -> HttpResponse:
    rollback = access.get_rollback_for_user(request.user, pk)
    access.require_operator(request.user, rollback, "reconcile.followup_add")
    ids = Finding.objects.filter(rollback=rollback).values_list("pk", flat=True)
    form = forms.FollowupForm(request.POST, finding_ids=ids)
    if not form.is_valid():
        messages.error(request, forms.errors_text(form))
        return _back(request, rollback.pk)
    try:
        stage = services.followup_add(
            rollback=rollback, finding_ids=form.cleaned_data["finding"], actor=request.user
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        rollback.refresh_from_db()
        messages.success(
            request,
            f"Stage {stage.index} added; rollback #{rollback.pk} is "
            f"{rollback.get_state_display()}.",
        )
    return _back(request, rollback.pk)
