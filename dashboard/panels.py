"""What the dashboard adds to the rollback page (``settings.UNWIND_ROLLBACK_PANELS``)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from dashboard import overview
from rollbacks.panels import Panel

# After the end, the panel waits this long for every system's first check (beat probes every
# HEALTH_CHECK_INTERVAL_S), then stands still: a probe that never comes says "no check".
AFTER_WAIT = timedelta(minutes=10)


def health_around(request, rollback, page) -> Panel:
    """Each system's health before the rollback and after it ended (two queries); polled
    until every system has its first check after the end."""
    around = overview.health_around(rollback)
    is_settled = rollback.finished_at is not None and (
        all(row.after for row in around) or timezone.now() - rollback.finished_at > AFTER_WAIT
    )
    return Panel("dashboard/_health_around.html", {"around": around}, is_settled=is_settled)
