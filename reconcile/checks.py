"""Run one reconciliation check against a real system; no database writes of Unwind's own.

``run_check(check, ctx)`` returns a ``CheckOutcome``: ``clean``, ``findings`` (one dict of
columns per finding) or ``error`` (the check could not say: a target down, a query that
failed, a response of the wrong shape). A check that cannot run is never reported as clean.

- ``sql``: the query runs in a read-only transaction on a named target database
  (``rollbacks.executors.sql.read_rows``); each row is a finding and must carry the
  ``columns`` the contract declares (its suggested compensation is templated over them).
- ``http``: with ``findings: <dotted path>``, the JSON response lists the findings (objects
  with the declared ``columns``; ``""`` for a top-level list). Without it, the response's
  status must be in ``expect_status`` (2xx by default) and its JSON must contain
  ``expect_body``: a mismatch is one finding with ``status`` and ``body``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from rollbacks.contracts import check_columns
from rollbacks.executors import ExecutorError
from rollbacks.executors.sql import read_rows
from rollbacks.templating import TemplateError, render_text, render_url, render_value

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_FINDINGS = 100
BODY_EXCERPT = 500


@dataclass
class CheckOutcome:
    outcome: str  # clean | findings | error
    rows: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""
    truncated: bool = False


def _plain(value: Any) -> Any:
    """A JSON-safe copy (dates, decimals and UUIDs as text)."""
    return json.loads(json.dumps(value, default=str))


def _found(rows: list[dict], truncated: bool, limit: int, what: str) -> CheckOutcome:
    if not rows:
        return CheckOutcome("clean", detail=f"{what}: nothing found")
    more = f" (more than {limit}: only the first {limit} are kept)" if truncated else ""
    return CheckOutcome(
        "findings", rows, f"{what}: {len(rows)} finding{'s' * (len(rows) != 1)}{more}", truncated
    )


def run_check(check: dict[str, Any], ctx: dict[str, Any]) -> CheckOutcome:
    try:
        if check["kind"] == "sql":
            return _sql(check, ctx)
        return _http(check, ctx)
    except TemplateError as exc:
        return CheckOutcome("error", detail=f"the check could not be filled in: {exc}")
    except ExecutorError as exc:
        return CheckOutcome("error", detail=exc.message[:1000])


def _sql(check: dict[str, Any], ctx: dict[str, Any]) -> CheckOutcome:
    database = render_text(check["database"], ctx)
    limit = check.get("max_findings", DEFAULT_MAX_FINDINGS)
    columns, rows, truncated = read_rows(
        database,
        check["query"],
        render_value(check.get("params") or {}, ctx),
        timeout_s=check.get("timeout_s", DEFAULT_TIMEOUT_S),
        limit=limit,
    )
    missing = [c for c in check["columns"] if c not in columns]
    if missing:
        return CheckOutcome(
            "error",
            detail=f"{database}: the query returned columns {', '.join(columns) or 'none'}; "
            f"the contract declares {', '.join(missing)} as well",
        )
    found = [_plain(dict(zip(columns, row, strict=True))) for row in rows]
    return _found(found, truncated, limit, database)


def _lookup(body: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if not isinstance(body, dict) or part not in body:
            raise KeyError(part)
        body = body[part]
    return body


def _contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` has everything ``expected`` says (objects: a subset of keys)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return actual == expected


def _http(check: dict[str, Any], ctx: dict[str, Any]) -> CheckOutcome:
    method = check.get("method", "GET")
    url = render_url(check["url"], ctx)
    headers = {k: render_text(v, ctx) for k, v in (check.get("headers") or {}).items()}
    body = render_value(check["body"], ctx) if "body" in check else None
    what = f"{method} {url}"
    try:
        response = httpx.request(
            method,
            url,
            headers=headers,
            json=body,
            timeout=check.get("timeout_s", DEFAULT_TIMEOUT_S),
        )
    except httpx.HTTPError as exc:
        return CheckOutcome("error", detail=f"{what}: {type(exc).__name__}: {exc}"[:1000])
    status = response.status_code
    expected = check.get("expect_status")
    status_ok = status in expected if expected else 200 <= status < 300
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = None
    if "findings" not in check:  # a status/body check: a mismatch is one finding
        if status_ok and ("expect_body" not in check or _contains(parsed, check["expect_body"])):
            return CheckOutcome("clean", detail=f"{what}: {status} as expected")
        excerpt = parsed if parsed is not None else response.text[:BODY_EXCERPT]
        return CheckOutcome(
            "findings",
            [_plain({"status": status, "body": excerpt})],
            f"{what}: {status}, not what the check expects",
        )
    if not status_ok:
        return CheckOutcome("error", detail=f"{what}: {status}: {response.text[:200]}")
    try:
        items = _lookup(parsed, check["findings"])
    except KeyError as exc:
        return CheckOutcome("error", detail=f"{what}: the response has no {exc.args[0]!r}")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return CheckOutcome(
            "error", detail=f"{what}: {check['findings'] or 'the body'} is not a list of objects"
        )
    columns = check_columns(check)
    for item in items:
        missing = [c for c in columns if c not in item]
        if missing:
            return CheckOutcome(
                "error", detail=f"{what}: a finding lacks {', '.join(missing)}: {item}"[:1000]
            )
    limit = check.get("max_findings", DEFAULT_MAX_FINDINGS)
    return _found(_plain(items[:limit]), len(items) > limit, limit, what)
