"""Request limits and JSON errors for the JSON API (everything under ``/api/``).

Two layers, because of where the body is read: under uvicorn, Django's ASGI handler reads
the whole body (spooling it to a temporary file) before any Django middleware runs
(FACTS.md), so ``AsgiBodyLimit`` wraps the ASGI application (``config/asgi.py``) and refuses
there; under WSGI, ``ApiBodyLimitMiddleware`` refuses before ``request.body`` is read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError

API_PREFIX = "/api/"


def _too_large_body(limit: int) -> dict[str, Any]:
    message = f"The request body is larger than the limit of {limit} bytes."
    return {"detail": message, "errors": {"body": [message]}, "limit_bytes": limit}


def _too_large(limit: int) -> JsonResponse:
    return JsonResponse(_too_large_body(limit), status=413)


class AsgiBodyLimit:
    """Refuse a request body over ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` with 413 before
    Django's ASGI handler reads (and spools) it, whatever the path.

    1. A declared ``Content-Length`` over the limit: answered at once, nothing is read.
    2. Otherwise (chunked, or a client sending more than it declared) the bytes received
       are counted; the chunk that passes the limit is not handed on: the 413 is sent and
       Django is told the client went away (``http.disconnect``), so it stops reading and
       answers nothing itself. The server closes the connection on the unread rest.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        received = 0
        refused = False

        async def counting_receive() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not refused:  # after our 413, whatever the app sends is dropped
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    @staticmethod
    async def _refuse(send: Callable, limit: int) -> None:
        body = json.dumps(_too_large_body(limit)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ApiBodyLimitMiddleware:
    """Refuse API request bodies over ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` with 413.

    Under ASGI the body has been read by the time this runs: ``AsgiBodyLimit`` refuses it
    first. Under WSGI (and Django's test client):

    1. A declared Content-Length over the limit is refused before anything is read.
    2. A body without one (chunked) is read up to limit + 1 bytes — Django's
       ``request.body`` never reads further — and refused if it is longer; the view then
       reads the body already in memory.
    3. An error answer under /api/ that is not JSON (an unknown URL's 404, a 405, a 500
       page) is replaced by a JSON one, so API clients always get ``{"detail": …}``.
    Placed right after SecurityMiddleware: nothing else has touched the body yet.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        refused = self._check_body(request)
        if refused is not None:
            return refused
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            detail = response.reason_phrase or "Error"
            json_response = JsonResponse(
                {"detail": detail, "errors": {}}, status=response.status_code
            )
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    json_response[header] = response[header]
            return json_response
        return response

    @staticmethod
    def _check_body(request: HttpRequest) -> HttpResponse | None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            return None
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                message = f"Content-Length {declared!r} is not a number of bytes."
                return JsonResponse(
                    {"detail": message, "errors": {"Content-Length": [message]}}, status=400
                )
            if length > limit:
                return _too_large(limit)
        try:
            # Bounded: by Content-Length (WSGI), by limit + 1 bytes without one, and by
            # the size of the already received body under ASGI, which may understate it.
            request.body  # noqa: B018
        except RequestDataTooBig:
            return _too_large(limit)
        except UnreadablePostError as exc:
            message = f"The request body could not be read: {exc}"
            return JsonResponse({"detail": message, "errors": {"body": [message]}}, status=400)
        return None
