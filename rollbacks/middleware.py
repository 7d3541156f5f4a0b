"""Request limits and JSON errors for the JSON API (everything under ``/api/``)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError

API_PREFIX = "/api/"


def _too_large(limit: int) -> JsonResponse:
    message = f"The request body is larger than the limit of {limit} bytes."
    return JsonResponse(
        {"detail": message, "errors": {"body": [message]}, "limit_bytes": limit}, status=413
    )


class ApiBodyLimitMiddleware:
    """Refuse API request bodies over ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` with 413.

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
