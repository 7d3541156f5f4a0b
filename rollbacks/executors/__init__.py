"""Executors: how a step touches a real system, one module per compensation kind.

``executor_for(kind)`` is the registry the engine asks. ``manual`` has no executor on
purpose: a human does the work and confirms it, so there is nothing to call.
"""

from __future__ import annotations

from .base import Executor, ExecutorError, Outcome, StepWork
from .flag import FlagExecutor
from .http import HttpExecutor
from .simulated import SimulatedExecutor
from .sql import SqlExecutor, SqlRestoreExecutor

__all__ = ["Executor", "ExecutorError", "Outcome", "StepWork", "executor_for"]

_EXECUTORS: dict[str, Executor] = {
    "http": HttpExecutor(),
    "sql": SqlExecutor(),
    "sql_restore": SqlRestoreExecutor(),
    "flag": FlagExecutor(),
    "simulated": SimulatedExecutor(),
}


def executor_for(kind: str) -> Executor:
    """The executor for a compensation kind; ``LookupError`` for ``manual`` and unknown kinds."""
    if kind == "manual":
        raise LookupError("a manual step has no executor: a human does it and confirms it")
    try:
        return _EXECUTORS[kind]
    except KeyError:
        raise LookupError(f"no executor for compensation kind {kind!r}") from None
