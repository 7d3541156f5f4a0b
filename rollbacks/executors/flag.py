"""Feature-flag compensations: turn a flag off through the Unleash admin API.

``POST {base_url}/api/admin/projects/{project}/features/{feature}/environments/{env}/off``
(FACTS.md). Each segment is URL-quoted here, because the rendered values come from a
forward action and must not be able to point the request at another path. The request
itself, its headers (idempotency key, traceparent) and its error classes are the HTTP
executor's.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from .base import Outcome, StepWork
from .http import request, request_async


def flag_off_url(spec: dict) -> str:
    segments = [spec.get("project") or "default", spec["feature"], spec["environment"]]
    project, feature, environment = (quote(str(s), safe="") for s in segments)
    return (
        f"{spec['base_url'].rstrip('/')}/api/admin/projects/{project}"
        f"/features/{feature}/environments/{environment}/off"
    )


class FlagExecutor:
    """``kind: flag`` — ``base_url``, ``project`` (default ``default``), ``feature``, ``environment``."""

    def execute(self, work: StepWork) -> Outcome:
        return _with_flag(work, request(work, method="POST", url=flag_off_url(work.spec)))

    async def execute_async(self, work: StepWork, client: httpx.AsyncClient) -> Outcome:
        outcome = await request_async(client, work, method="POST", url=flag_off_url(work.spec))
        return _with_flag(work, outcome)


def _with_flag(work: StepWork, outcome: Outcome) -> Outcome:
    outcome.output["flag"] = {
        "project": work.spec.get("project") or "default",
        "feature": work.spec["feature"],
        "environment": work.spec["environment"],
        "enabled": False,
    }
    return outcome
