"""The timeline's live parts: a fragment of new items after a cursor (polled), and the same
items as server-sent events (ASGI). docs/timeline.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers

from rollbacks import access
from timeline import services
from timeline.services import Cursor, CursorError, Scope

ITEMS = "timeline/_timeline.html#timeline-items"
POLLER = "timeline/_timeline.html#timeline-poll"
STREAM_POLL_S = 0.1  # how often a stream looks for new items (one indexed query)
STREAM_SECONDS = 300  # then the stream ends and the browser reconnects with Last-Event-ID
HEARTBEAT_S = 15


def _scope_and_cursor(request: HttpRequest, pk: int, cursor_text: str | None):
    rollback = access.get_rollback_for_user(request.user, pk)
    if not cursor_text:
        raise CursorError("after: give the cursor of the newest item the page shows")
    cursor = Cursor.parse(cursor_text)
    return Scope.of(rollback, request.GET.get("system", "")), cursor


def _bad_cursor(exc: CursorError) -> HttpResponse:
    return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")


@login_required
def timeline_fragment(request: HttpRequest, pk: int) -> HttpResponse:
    """``?after=<cursor>``: the items recorded after it, newest first, and (out of band) the
    poller with the new cursor; 204 when there are none, which costs one indexed query."""
    try:
        scope, cursor = _scope_and_cursor(request, pk, request.GET.get("after"))
    except CursorError as exc:
        return _bad_cursor(exc)
    items = services.after(scope, cursor)
    if not items:
        response = HttpResponse(status=204)
    else:
        context = {
            "rollback": {"pk": pk},
            "items": items[::-1],
            "tl": {"cursor": items[-1].cursor, "system": scope.system, "live": "poll"},
            "is_oob": True,
        }
        html = render_to_string(ITEMS, context, request)
        html += render_to_string(POLLER, context, request)
        response = HttpResponse(html)
    add_never_cache_headers(response)
    return response


def _event(items: list, cursor: Cursor) -> str:
    html = render_to_string(ITEMS, {"items": items[::-1]})
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"id: {cursor}\nevent: timeline\n{data}\n"


@login_required
async def timeline_stream(request: HttpRequest, pk: int) -> HttpResponse:
    """Server-sent events: ``event: timeline`` with the new items' HTML whenever some are
    recorded, found by the same one-query look-up as the fragment, every 100 ms. The event
    id is the cursor, so a reconnecting browser (``Last-Event-ID``) misses nothing."""
    try:
        scope, cursor = await sync_to_async(_scope_and_cursor)(
            request, pk, request.headers.get("Last-Event-ID") or request.GET.get("after")
        )
    except CursorError as exc:
        return _bad_cursor(exc)
    find = sync_to_async(services.after)

    async def events() -> AsyncIterator[str]:
        nonlocal cursor
        yield "retry: 1000\n\n"
        started = last_sent = time.monotonic()
        while time.monotonic() - started < STREAM_SECONDS:
            items = await find(scope, cursor)
            if items:
                cursor = items[-1].cursor
                yield _event(items, cursor)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent > HEARTBEAT_S:
                yield ": still here\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(STREAM_POLL_S)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    add_never_cache_headers(response)
    response["X-Accel-Buffering"] = "no"
    return response
