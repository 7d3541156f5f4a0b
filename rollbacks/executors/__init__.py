"""Executors: how a step touches a real system, one module per compensation kind.

``executor_for(kind)`` is the registry; ``executor_for_step`` is what the engine asks, so
that a drill never touches production: its steps on a system that is not marked as a
rehearsal target (``System.is_rehearsal``) run on the ``RehearsalExecutor`` instead. ``manual`` has no executor on
purpose: a human does the work and confirms it, so there is nothing to call.
"""

from __future__ import annotations

from .base import Executor, ExecutorError, Outcome, StepWork
from .flag import FlagExecutor
from .http import HttpExecutor
from .simulated import RehearsalExecutor, SimulatedExecutor
from .sql import SqlExecutor, SqlRestoreExecutor

__all__ = [
    "Executor",
    "ExecutorError",
    "Outcome",
    "StepWork",
    "executor_for",
    "executor_for_step",
]

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


_REHEARSAL = RehearsalExecutor()


def executor_for_step(kind: str, *, is_drill: bool, is_rehearsal_target: bool) -> Executor:
    """The executor a step runs on: its kind's, except for a drill's step on a system that
    is not a rehearsal target, which is rehearsed (simulated) and touches nothing."""
    executor = executor_for(kind)  # a manual or unknown kind is refused for drills too
    if is_drill and not is_rehearsal_target and kind != "simulated":
        return _REHEARSAL
    return executor
