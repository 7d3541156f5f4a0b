"""What drills add to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``)."""

from __future__ import annotations

from drills.forms import FaultForm
from drills.models import Fault
from drills.services import EDITABLE
from rollbacks.panels import Panel


def faults(request, rollback, page) -> Panel | None:
    """A drill's injected faults, the form to add one until it starts, and how often each
    fired (polled while the drill runs)."""
    if not rollback.is_drill:
        return None
    is_editable = page.can_act and rollback.state in EDITABLE
    form = None
    if is_editable:
        steps = rollback.steps.filter(is_manual=False).select_related("system", "forward_action")
        form = FaultForm(steps=steps)
    context = {
        "faults": list(Fault.objects.filter(rollback=rollback).select_related("step__system")),
        "is_editable": is_editable,
        "form": form,
    }
    return Panel(
        "drills/_faults_panel.html",
        context,
        is_settled=is_editable or not page.is_live,
    )
