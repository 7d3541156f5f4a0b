"""Faults firing in the worker: wrap a drill step's executor so that its faults hit.

Each hit first counts itself (``Fault.fired``, a conditional update, so two attempts never
share one hit) and records ``drill.fault.fired`` in the same transaction; then it acts:

- ``kill``: the worker process running the step sends SIGKILL to its parent (the Celery
  main process) and to itself, a real crash. The step keeps its lease until it expires;
  the sweeper then marks the attempt lost and dispatches the step again (docs/engine.md).
  It fires only in a prefork pool child, so an in-process caller (a test, a shell) is
  never killed: there the attempt fails transiently instead, without counting a hit.
- ``slow``: the attempt is held up for ``seconds`` (cut at the step's timeout, which then
  fails transiently, like a slow real target).
- ``fail``: the attempt fails, transiently (the engine retries with backoff) or
  permanently (the step waits for a human).
"""

from __future__ import annotations

import os
import signal
import time

from django.db import transaction
from django.db.models import F

import ledger.services as ledger
from drills.models import Fault
from drills.services import fault_payload
from rollbacks.executors import Executor, ExecutorError, Outcome, StepWork
from rollbacks.models import Attempt, Step

ORDER = {Fault.Kind.KILL: 0, Fault.Kind.SLOW: 1, Fault.Kind.FAIL: 2}


def in_pool_child() -> bool:
    """True in a Celery prefork pool process, whose parent is the worker's main process."""
    from billiard.process import current_process

    return current_process().name.startswith("ForkPoolWorker") and os.getppid() > 1


def _hit(fault: Fault, step: Step, attempt: Attempt) -> bool:
    with transaction.atomic():
        if not Fault.objects.filter(pk=fault.pk, fired__lt=F("times")).update(fired=F("fired") + 1):
            return False
        ledger.record(
            actor="worker",
            action="drill.fault.fired",
            subject=step,
            rollback_id=step.rollback_id,
            trace_id=step.rollback.trace_id,
            reason=f"injected: step #{step.pk} {fault.describe()}",
            outcome="failed" if fault.kind != Fault.Kind.SLOW else "ok",
            payload={"is_drill": True, "attempt": attempt.number, "worker": attempt.worker}
            | fault_payload(fault),
        )
    return True


class FaultyExecutor:
    """The step's own executor, behind the drill's faults for that step."""

    def __init__(self, inner: Executor, step: Step, attempt: Attempt, faults: list[Fault]):
        self.inner, self.step, self.attempt = inner, step, attempt
        self.faults = sorted(faults, key=lambda f: (ORDER[f.kind], f.pk))

    def execute(self, work: StepWork) -> Outcome:
        for fault in self.faults:
            if fault.kind == Fault.Kind.KILL:
                if not in_pool_child():
                    raise ExecutorError(
                        "injected worker kill: fires only in a prefork Celery worker process",
                        permanent=False,
                    )
                if _hit(fault, self.step, self.attempt):
                    os.kill(os.getppid(), signal.SIGKILL)
                    os.kill(os.getpid(), signal.SIGKILL)
            elif fault.kind == Fault.Kind.SLOW and _hit(fault, self.step, self.attempt):
                if fault.seconds > work.timeout_s:
                    time.sleep(work.timeout_s)
                    raise ExecutorError(
                        f"injected slow-down of {fault.seconds:g} s: timed out after "
                        f"{work.timeout_s:g} s",
                        permanent=False,
                    )
                time.sleep(fault.seconds)
            elif fault.kind == Fault.Kind.FAIL and _hit(fault, self.step, self.attempt):
                how = "permanent" if fault.is_permanent else "transient"
                raise ExecutorError(
                    f"injected {how} failure ({fault.describe()})", permanent=fault.is_permanent
                )
        return self.inner.execute(work)


def wrap(step: Step, attempt: Attempt, executor: Executor) -> Executor:
    faults = [f for f in Fault.objects.filter(step=step) if not f.is_used_up]
    return FaultyExecutor(executor, step, attempt, faults) if faults else executor
