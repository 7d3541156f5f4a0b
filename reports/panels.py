"""What reports add to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``)."""

from __future__ import annotations

from rollbacks.panels import Panel


def report_status(request, rollback, page) -> Panel:
    """The link to the report, marked provisional until the rollback has finished (it polls
    until then, so the mark goes when the rollback ends)."""
    return Panel("reports/_link.html", region="header", is_settled=not page.is_live)
