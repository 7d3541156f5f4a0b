"""Feature-flag compensations: turn a flag off through the Unleash admin API.

``POST {base_url}/api/admin/projects/{project}/features/{feature}/environments/{env}/off``
(FACTS.md). Each segment is URL-quoted here, because the rendered values come from a
forward action and must not be able to point the request at another path. The request
itself, its headers (idempotency key, traceparent) and its error classes are the HTTP
executor's.
"""

from __future__ import annotations

from urllib.parse import quote

from .base import Outcome, StepWork
from .http import request


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
        outcome = request(work, method="POST", url=flag_off_url(work.spec))
        outcome.output["flag"] = {
            "project": work.spec.get("project") or "default",
            "feature": work.spec["feature"],
            "environment": work.spec["environment"],
            "enabled": False,
        }
        return outcome
