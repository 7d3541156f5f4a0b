"""What governance adds to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``): the
approval panel, the break-glass form and banner, stage gates and the policy decision.

All are live panels: part of the polled ``rollback-status`` fragment, so an approval, an
opened gate or a review shows on every open page within a second. They share one read,
``page.page_context`` (a fixed number of queries whatever the steps), kept in ``page.memo``.
"""

from __future__ import annotations

from typing import Any

from governance import page as governance_page
from rollbacks.models import Rollback
from rollbacks.panels import Panel, PanelPage, joins, live

R = Rollback.State


def _gov(request, rollback: Rollback, page: PanelPage) -> dict[str, Any]:
    if "governance" not in page.memo:
        page.memo["governance"] = governance_page.page_context(
            rollback, request.user, page.stages, page.forms
        )
    return page.memo["governance"]


def _panel(template: str, gov: dict[str, Any], region: str, **kwargs: Any) -> Panel:
    return Panel(template, {"gov": gov}, region=region, fingerprint=gov["fingerprint"], **kwargs)


@live
@joins(*governance_page.ROLLBACK_RELATED)
def approval_panel(request, rollback, page) -> Panel | None:
    """While it awaits approval: how many approvals it has, the blast radius, and approve
    or reject with the policy's attestations (for whoever may), on the first screen."""
    gov = _gov(request, rollback, page)
    if not gov["is_awaiting"]:
        return None
    needed = gov["req"].approvals
    return _panel(
        "governance/_approval_panel.html",
        gov,
        "action",
        headline=f"{gov['live_count']} of {needed} approvals received" if needed else "",
        needs_you=gov["can_approve"],
    )


@live
def break_glass_form(request, rollback, page) -> Panel | None:
    """Start without approval, for an operator holding the right, beside Abort."""
    gov = _gov(request, rollback, page)
    if not gov["can_break_glass"] or not page.can_act:
        return None
    return _panel("governance/_break_glass_form.html", gov, "controls")


@live
def break_glass(request, rollback, page) -> Panel | None:
    """A rollback that broke the glass: the banner, its reviews and the review form."""
    gov = _gov(request, rollback, page)
    if gov["break_glass"] is None:
        return None
    return _panel("governance/_break_glass.html", gov, "status", tags=["break-glass"])


@live
def stage_gates(request, rollback, page) -> Panel | None:
    """Each stage touching a gated tier: its gate, and the form that opens it."""
    gov = _gov(request, rollback, page)
    if not gov["has_gates"]:
        return None
    gated = [stage for stage in page.stages if stage.gate_tiers]
    waiting = next((stage for stage in gated if stage.is_waiting_at_gate), None)
    return _panel(
        "governance/_gate.html",
        gov,
        "stage",
        headline=f"stage {waiting.index} waits for an approver to open its gate" if waiting else "",
        is_halting=waiting is not None,
        needs_you=waiting is not None and gov["can_open_gate"],
        stage_tags={stage.index: ["gate"] for stage in gated},
    )


@live
def policy(request, rollback, page) -> Panel:
    """The policy decision, the approvals so far, and withdrawing mine."""
    panel = _panel("governance/_policy.html", _gov(request, rollback, page), "end")
    panel.context["stages"] = page.stages  # the gates it points to
    return panel
