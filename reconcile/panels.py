"""What reconciliation adds to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``)."""

from __future__ import annotations

from rollbacks.panels import Panel


def reconciliation(request, rollback, page) -> Panel:
    """The reconciliation panel: it costs the page no query, because it loads itself
    (``reconcile-panel``) and polls while the checks can still change."""
    return Panel("reconcile/_findings.html")
