"""The drill's faults on the rollback page: add one, remove one (before the drill starts)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from drills import services
from drills.forms import FaultForm
from drills.models import Fault
from rollbacks import access


def _back(rollback_pk: int) -> HttpResponse:
    response = redirect("rollback", pk=rollback_pk)
    response["Location"] += "#drill-faults"
    return response


def _service_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return " ".join(f"{f}: {m}" for f, ms in exc.message_dict.items() for m in ms)
    return " ".join(exc.messages)


@login_required
@require_POST
def fault_add(request: HttpRequest, pk: int) -> HttpResponse:
    """Add a fault to one step of a drill that has not started."""
    rollback = access.get_rollback_for_user(request.user, pk)
    access.require_operator(request.user, rollback, "drill.fault.add")
    steps = rollback.steps.filter(is_manual=False).select_related("system", "forward_action")
    form = FaultForm(request.POST, steps=steps)
    if not form.is_valid():
        messages.error(
            request,
            " ".join(
                f"{form.fields[f].label}: {' '.join(e)}" if f in form.fields else " ".join(e)
                for f, e in form.errors.items()
            ),
        )
        return _back(rollback.pk)
    data = form.cleaned_data
    try:
        fault = services.fault_add(
            rollback=rollback,
            actor=request.user,
            step_id=data["step"],
            kind=data["kind"],
            times=data["times"],
            permanent=data["permanent"],
            seconds=data["seconds"] or 0,
        )
    except ValidationError as exc:
        messages.error(request, _service_error(exc))
        return _back(rollback.pk)
    messages.success(request, f"Fault added: step {fault.step_id} {fault.describe()}.")
    return _back(rollback.pk)


@login_required
@require_POST
def fault_remove(request: HttpRequest, pk: int, fault_id: int) -> HttpResponse:
    """Take a fault off a drill that has not started."""
    rollback = access.get_rollback_for_user(request.user, pk)
    access.require_operator(request.user, rollback, "drill.fault.remove")
    fault = get_object_or_404(
        Fault.objects.select_related("rollback", "step"), pk=fault_id, rollback=rollback
    )
    try:
        services.fault_remove(fault=fault, actor=request.user)
    except ValidationError as exc:
        messages.error(request, _service_error(exc))
        return _back(rollback.pk)
    messages.success(request, f"Fault removed from step {fault.step_id}.")
    return _back(rollback.pk)
