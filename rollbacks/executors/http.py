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
    sent_headers = httpx.Headers(headers or {})  # case-insensitive, so these replace any
    # Idempotency-Key or traceparent a contract set: the step's own always win.
    sent_headers["Idempotency-Key"] = _quoted(work.idempotency_key)
    if work.traceparent:
        sent_headers["traceparent"] = work.traceparent
    what = f"{method} {url}"
    if segment := dot_segment(url):  # httpx would resolve it and call another path
        raise ExecutorError(
            f"{what}: refused: the path has a {segment!r} segment, so the target would be "
            "called at another path than the plan shows",
            permanent=True,
        )
    try:
        response = httpx.request(
            method,
            url,
            headers=sent_headers,
            json=body,  # None: no body at all
            timeout=work.timeout_s,
        )
    except httpx.TimeoutException as exc:
        raise ExecutorError(
            f"{what}: timed out after {work.timeout_s}s ({type(exc).__name__})", permanent=False
        ) from exc
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
        raise ExecutorError(f"{what}: {type(exc).__name__}: {exc}", permanent=True) from exc
    except httpx.TransportError as exc:  # refused, reset, DNS, the target hung up
        raise ExecutorError(f"{what}: {type(exc).__name__}: {exc}", permanent=False) from exc

    status = response.status_code
    excerpt = response.text[:EXCERPT_CHARS]
    is_expected = status in expect_status if expect_status else 200 <= status < 300
    if not is_expected:
        is_transient = status >= 500 or status in TRANSIENT_STATUSES
        raise ExecutorError(
            f"{what}: {status} {response.reason_phrase}: {excerpt[:200]}",
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


class HttpExecutor:
    """``kind: http`` — call an undo endpoint (``url``, ``method``, ``headers``, ``body``)."""

    def execute(self, work: StepWork) -> Outcome:
        spec = work.spec
        return request(
            work,
            method=spec.get("method", "POST"),
            url=spec["url"],
            headers=spec.get("headers"),
            body=spec.get("body"),
            expect_status=spec.get("expect_status"),
        )
