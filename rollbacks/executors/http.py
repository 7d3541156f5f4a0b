"""HTTP compensations: one request per attempt, carrying the step's idempotency key.

The key goes in ``Idempotency-Key`` as a quoted string (IETF httpapi draft, FACTS.md), the
same on every attempt, so a target that dedupes applies the effect once however often we
retry. ``traceparent`` ties the target's logs to the rollback's trace.

Which failures are worth retrying: 5xx, 408, 429, timeouts and connection errors are
transient; any other unexpected status is permanent (the request itself is wrong).
"""

from __future__ import annotations

from typing import Any

import httpx

from rollbacks.templating import dot_segment

from .base import ExecutorError, Outcome, StepWork

TRANSIENT_STATUSES = {408, 429}
EXCERPT_CHARS = 500


def _quoted(key: str) -> str:
    """An RFC 8941 string: ``"key"`` with ``\\`` and ``"`` escaped."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_replayed(response: httpx.Response) -> bool:
    """Whether the target says it answered from its idempotency record (header or JSON)."""
    if response.headers.get("Idempotent-Replayed", "").lower() == "true":
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("replayed") is True


def _headers(work: StepWork, headers: dict[str, str] | None) -> httpx.Headers:
    sent_headers = httpx.Headers(headers or {})  # case-insensitive, so these replace any
    # Idempotency-Key or traceparent a contract set: the step's own always win.
    sent_headers["Idempotency-Key"] = _quoted(work.idempotency_key)
    if work.traceparent:
        sent_headers["traceparent"] = work.traceparent
    return sent_headers


def _refuse_dot_segments(method: str, url: str) -> None:
    if segment := dot_segment(url):  # httpx would resolve it and call another path
        raise ExecutorError(
            f"{method} {url}: refused: the path has a {segment!r} segment, so the target would be "
            "called at another path than the plan shows",
            permanent=True,
        )


def _transport_error(work: StepWork, what: str, exc: Exception) -> ExecutorError:
    """The ExecutorError for an exception httpx raised while sending ``what``."""
    if isinstance(exc, httpx.TimeoutException):
        return ExecutorError(
            f"{what}: timed out after {work.timeout_s}s ({type(exc).__name__})", permanent=False
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.InvalidURL):
        return ExecutorError(f"{what}: {type(exc).__name__}: {exc}", permanent=True)
    # refused, reset, DNS, the target hung up
    return ExecutorError(f"{what}: {type(exc).__name__}: {exc}", permanent=False)


_SEND_ERRORS = (httpx.TransportError, httpx.InvalidURL)


def _outcome(
    response: httpx.Response, *, method: str, url: str, expect_status: list[int] | None
) -> Outcome:
    status = response.status_code
    excerpt = response.text[:EXCERPT_CHARS]
    is_expected = status in expect_status if expect_status else 200 <= status < 300
    if not is_expected:
        is_transient = status >= 500 or status in TRANSIENT_STATUSES
        raise ExecutorError(
            f"{method} {url}: {status} {response.reason_phrase}: {excerpt[:200]}",
            permanent=not is_transient,
        )
    return Outcome(
        {
            "method": method,
            "url": url,
            "status": status,
            "replayed": _is_replayed(response),
            "body": excerpt,
        }
    )


def request(
    work: StepWork,
    *,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    expect_status: list[int] | None = None,
) -> Outcome:
    """Send one request for ``work``; the shared core of the http and flag executors."""
    _refuse_dot_segments(method, url)
    try:
        response = httpx.request(
            method,
            url,
            headers=_headers(work, headers),
            json=body,  # None: no body at all
            timeout=work.timeout_s,
        )
    except _SEND_ERRORS as exc:
        raise _transport_error(work, f"{method} {url}", exc) from exc
    return _outcome(response, method=method, url=url, expect_status=expect_status)


async def request_async(
    client: httpx.AsyncClient,
    work: StepWork,
    *,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    expect_status: list[int] | None = None,
) -> Outcome:
    """``request`` on the execution loop's shared client: the same headers, timeout and
    error classes, without holding a thread while the target answers."""
    _refuse_dot_segments(method, url)
    try:
        response = await client.request(
            method,
            url,
            headers=_headers(work, headers),
            json=body,
            timeout=work.timeout_s,
        )
    except _SEND_ERRORS as exc:
        raise _transport_error(work, f"{method} {url}", exc) from exc
    return _outcome(response, method=method, url=url, expect_status=expect_status)


def _request_fields(spec: dict) -> dict:
    return {
        "method": spec.get("method", "POST"),
        "url": spec["url"],
        "headers": spec.get("headers"),
        "body": spec.get("body"),
        "expect_status": spec.get("expect_status"),
    }


class HttpExecutor:
    """``kind: http`` — call an undo endpoint (``url``, ``method``, ``headers``, ``body``)."""

    def execute(self, work: StepWork) -> Outcome:
        return request(work, **_request_fields(work.spec))

    async def execute_async(self, work: StepWork, client: httpx.AsyncClient) -> Outcome:
        return await request_async(client, work, **_request_fields(work.spec))
