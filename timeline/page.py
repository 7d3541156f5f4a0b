"""What the timeline adds to the rollback page (``rollbacks/views.py`` finds this module by
name, as it finds governance's: imports flow timeline → governance → rollbacks → ledger)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest

from rollbacks.models import Rollback
from rollbacks.panels import Panel, PanelPage
from timeline import services
from timeline.services import Cursor, CursorError, Scope

START = Cursor.parse("0.alert.0")  # before everything: the cursor of an empty timeline
LIVE_MODES = ("sse", "poll", "off")


def live_mode(request: HttpRequest) -> str:
    """How an open page learns of new items: server-sent events under ASGI (uvicorn), a
    one-second poll under WSGI (where a stream would be buffered whole). ``?live=`` or
    ``settings.UNWIND_TIMELINE_LIVE`` can choose; docs/timeline.md has the measurements."""
    wanted = request.GET.get("live") or getattr(settings, "UNWIND_TIMELINE_LIVE", "auto")
    if wanted in LIVE_MODES:
        return wanted
    return "sse" if isinstance(request, ASGIRequest) else "poll"


def parse_cursor(text: str | None) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.parse(text)
    except CursorError:
        return None


def page_context(
    request: HttpRequest, rollback: Rollback, systems: list[str], *, is_live: bool = True
) -> dict[str, Any]:
    """The newest page of the timeline (or the page before ``?before=``), filtered by
    ``?system=`` when it names one of the rollback's systems. One query."""
    system = request.GET.get("system", "")
    if system not in systems:
        system = ""
    before = parse_cursor(request.GET.get("before"))
    items, has_older = services.latest(Scope.of(rollback, system), before=before)
    return {
        "items": items,
        "systems": systems,
        "system": system,
        "before": before,
        "has_older": has_older,
        "older": items[-1].cursor if items else None,
        "cursor": items[0].cursor if items else START,
        # Older pages stand still; the newest one follows what is recorded until the
        # rollback has finished (then the whole page stands still).
        "live": live_mode(request) if is_live and before is None else "off",
    }


def rollback_panel(request: HttpRequest, rollback: Rollback, page: PanelPage) -> Panel:
    """The rollback page's timeline panel (``settings.UNWIND_ROLLBACK_PANELS``): it follows
    new items itself (server-sent events or its own poll), so the panel is settled."""
    tl = page_context(request, rollback, page.systems, is_live=page.is_live)
    return Panel("timeline/_timeline.html", {"tl": tl, "items": tl["items"]})
