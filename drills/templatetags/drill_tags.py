"""``{% drill_faults_panel %}``: the drill's faults on the rollback page."""

from __future__ import annotations

from django import template

from drills.forms import FaultForm
from drills.models import Fault
from drills.services import EDITABLE

register = template.Library()


@register.inclusion_tag("drills/_faults_panel.html", takes_context=True)
def drill_faults_panel(context) -> dict:
    rollback = context["rollback"]
    faults = list(Fault.objects.filter(rollback=rollback).select_related("step__system"))
    is_editable = bool(context.get("can_act")) and rollback.state in EDITABLE
    form = None
    if is_editable:
        steps = rollback.steps.filter(is_manual=False).select_related("system", "forward_action")
        form = FaultForm(steps=steps)
    return {
        "rollback": rollback,
        "faults": faults,
        "is_editable": is_editable,
        "form": form,
        "csrf_token": context.get("csrf_token"),
    }
