"""What the engine asks of the drills app, found by name (``settings.UNWIND_DRILLS``),
because imports flow drills → rollbacks and never back."""

from __future__ import annotations

from typing import Any

from drills import faults as _faults
from drills import services


def plan_faults(*, rollback: Any, faults: list[dict], actor: Any) -> None:
    """Inside ``rollback_plan``'s transaction: store the faults given with the plan."""
    services.faults_plan(rollback=rollback, faults=faults, actor=actor)


def executor(*, step: Any, attempt: Any, executor: Any) -> Any:
    """In the worker, for a drill's step: its executor behind the step's faults."""
    return _faults.wrap(step, attempt, executor)
