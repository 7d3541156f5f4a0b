"""The one interface every executor implements, and the error that says whether to retry.

The engine renders a step's compensation, claims the step, and calls ``execute`` outside
any transaction of its own. An executor makes one attempt and either returns an
``Outcome`` or raises ``ExecutorError``: ``permanent=False`` means "try again later"
(timeouts, 5xx, a dropped connection), ``permanent=True`` means retrying cannot help and a
human has to look (a 4xx, a syntax error, a row that changed since it was captured).

Every attempt of a step carries the same ``idempotency_key``, so a retry after a crash
cannot apply the effect twice (SPEC §3, invariant 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class StepWork:
    """Everything an executor needs for one attempt; built by the engine from a Step."""

    kind: str  # compensation kind
    spec: dict[str, Any]  # the RENDERED compensation (templates already filled)
    idempotency_key: str  # stable per step, identical on every attempt
    timeout_s: float
    traceparent: str  # W3C traceparent to send to the target ('' if none)
    before: dict[str, Any] | None = None  # forward action's before-image (sql_restore)
    after: dict[str, Any] | None = None  # forward action's after-image (sql_restore)


@dataclass
class Outcome:
    """What to show the operator: status code, rows affected, replayed or not…"""

    output: dict[str, Any]


class ExecutorError(Exception):
    """An attempt failed; ``permanent`` says whether another attempt could succeed."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class Executor(Protocol):
    def execute(self, work: StepWork) -> Outcome: ...
