"""The timeline's live parts: a fragment of new items after a cursor (polled), and the same
items as server-sent events (ASGI). docs/timeline.md."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.db import InterfaceError, OperationalError, connection, connections
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers

from governance.models import Alert
from ledger.models import Entry
from rollbacks import access
from timeline import services
from timeline.models import Event
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


# Streams -------------------------------------------------------------------------------------
#
# An open stream must not hold a database connection (issue 16: each held one for up to
# 300 s, and 100 tabs exhausted PostgreSQL). So no stream runs a query in a thread of its own:
# 1. opening it (session, user, the rollback's visibility) and every look-up run in one small
#    thread pool per process, whose threads keep their connections: the process holds at most
#    STREAM_DB_THREADS connections however many streams are open;
# 2. every STREAM_POLL_S, one cheap query per process (the newest id of each source) says
#    whether anything was recorded at all; a stream runs its timeline look-up only then, or
#    at least every STREAM_RECHECK_S (an item whose transaction commits after a later one
#    does not move the newest id);
# 3. a user holds at most STREAMS_PER_USER open streams per process; one more is a 429.
STREAM_DB_THREADS = 2
STREAM_RECHECK_S = 1.0
STREAMS_PER_USER = 10
_pool = ThreadPoolExecutor(max_workers=STREAM_DB_THREADS, thread_name_prefix="timeline-db")
_open_streams: Counter[int] = Counter()
_newest: dict[asyncio.AbstractEventLoop, tuple[float, tuple, asyncio.Lock]] = {}


def _in_pool_thread(fn, *args):
    """Run ``fn`` in the pool; a connection that broke is closed, to be opened again."""

    def call():
        try:
            return fn(*args)
        except (InterfaceError, OperationalError):
            connection.close()
            raise

    return asyncio.get_running_loop().run_in_executor(_pool, call)


def close_stream_connections() -> None:
    """Close the pool threads' connections (tests, before their database is dropped)."""
    together = threading.Barrier(STREAM_DB_THREADS)  # one task in each thread of the pool

    def close() -> None:
        together.wait(timeout=10)
        connections.close_all()

    for future in [_pool.submit(close) for _ in range(STREAM_DB_THREADS)]:
        future.result()


def _sources_newest() -> tuple:
    return tuple(
        model.objects.aggregate(newest=Max("id"))["newest"] for model in (Entry, Event, Alert)
    )


async def _newest_ids() -> tuple:
    """The newest id of each source, looked up at most once per STREAM_POLL_S per process."""
    loop = asyncio.get_running_loop()
    at, ids, lock = _newest.get(loop) or (0.0, (), asyncio.Lock())
    _newest.setdefault(loop, (at, ids, lock))
    async with lock:
        at, ids, _ = _newest[loop]
        if time.monotonic() - at >= STREAM_POLL_S:
            ids = await _in_pool_thread(_sources_newest)
            _newest[loop] = (time.monotonic(), ids, lock)
    return ids


def _open(request: HttpRequest, pk: int, cursor_text: str | None):
    """The stream's user, scope and cursor, or the response that refuses it (in the pool)."""
    user = request.user
    if not user.is_authenticated:
        return None, redirect_to_login(request.get_full_path())
    if _open_streams[user.pk] >= STREAMS_PER_USER:
        response = HttpResponse(
            f"You have {STREAMS_PER_USER} live timelines open: close one (or reload it) "
            "to open another.\n",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = "30"
        return None, response
    try:
        scope, cursor = _scope_and_cursor(request, pk, cursor_text)
    except CursorError as exc:
        return None, _bad_cursor(exc)
    return (user.pk, scope, cursor), None


async def timeline_stream(request: HttpRequest, pk: int) -> HttpResponse:
    """Server-sent events: ``event: timeline`` with the new items' HTML whenever some are
    recorded, found by the same one-query look-up as the fragment. The event id is the
    cursor, so a reconnecting browser (``Last-Event-ID``) misses nothing. Holds no database
    connection of its own (above)."""
    cursor_text = request.headers.get("Last-Event-ID") or request.GET.get("after")
    opened, refusal = await _in_pool_thread(_open, request, pk, cursor_text)
    if refusal is not None:
        return refusal
    user_id, scope, cursor = opened

    async def events() -> AsyncIterator[str]:
        nonlocal cursor
        _open_streams[user_id] += 1
        try:
            yield "retry: 1000\n\n"
            started = last_sent = last_look = time.monotonic()
            seen: tuple = ()
            while time.monotonic() - started < STREAM_SECONDS:
                newest = await _newest_ids()
                if newest != seen or time.monotonic() - last_look >= STREAM_RECHECK_S:
                    seen, last_look = newest, time.monotonic()
                    items = await _in_pool_thread(services.after, scope, cursor)
                    if items:
                        cursor = items[-1].cursor
                        yield _event(items, cursor)
                        last_sent = time.monotonic()
                if time.monotonic() - last_sent > HEARTBEAT_S:
                    yield ": still here\n\n"
                    last_sent = time.monotonic()
                await asyncio.sleep(STREAM_POLL_S)
        finally:
            _open_streams[user_id] -= 1

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    add_never_cache_headers(response)
    response["X-Accel-Buffering"] = "no"
    return response
