"""The runbooks page and the instantiation form (docs/runbooks.md)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from rollbacks import access, engine
from runbooks import services
from runbooks.forms import InstantiateForm
from runbooks.models import RunbookVersion


@login_required
def runbook_list(request: HttpRequest) -> HttpResponse:
    """The runbooks whose systems the user sees; operators of those teams may use them."""
    versions = services.latest_versions_for(request.user)
    can_use = access.has_role(request.user, *access.OPERATOR_ROLES)
    return render(request, "runbooks/runbook_list.html", {"versions": versions, "can_use": can_use})


def _detail(request: HttpRequest, version: RunbookVersion, form, status: int = 200):
    context = {
        "version": version,
        "runbook": version.runbook,
        "form": form,
        "can_use": services.may_use(request.user, version),
    }
    return render(request, "runbooks/runbook_detail.html", context, status=status)


@login_required
def runbook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """A runbook's newest version: what it does, and the form to instantiate it."""
    version = services.get_version_for_user(request.user, slug)
    return _detail(request, version, InstantiateForm(version=version))


@login_required
@require_POST
def runbook_instantiate(request: HttpRequest, slug: str) -> HttpResponse:
    """Instantiate the runbook's newest version and go to the planned rollback."""
    version = services.get_version_for_user(request.user, slug)
    if not services.may_use(request.user, version):
        access.refuse(
            actor=request.user,
            action="runbook.instantiate",
            subject=version,
            why="only an operator of the teams owning every system of the runbook may use it",
        )
    form = InstantiateForm(request.POST, version=version)
    if form.is_valid():
        try:
            rollback = services.runbook_instantiate(
                version=version,
                actor=request.user,
                values=form.values(),
                reason=form.cleaned_data["reason"],
                is_drill=form.cleaned_data["is_drill"],
            )
        except engine.EngineError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request,
                f"Runbook {version} instantiated: rollback #{rollback.pk} "
                f"{rollback.get_state_display()}.",
            )
            return redirect("rollback", pk=rollback.pk)
    return _detail(request, version, form, status=400)
