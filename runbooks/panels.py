"""What runbooks add to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``)."""

from __future__ import annotations

from rollbacks.panels import Panel


def runbook_fact(request, rollback, page) -> Panel | None:
    """The runbook a rollback was instantiated from, among the page's facts."""
    if not rollback.run.process.startswith("runbook:"):
        return None
    return Panel("runbooks/_rollback_runbook.html", region="facts")
