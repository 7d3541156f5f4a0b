"""Celery tasks: thin, ids only, keyword arguments; the services do the work."""

import socket

from celery import shared_task

from metrics.events import sweep_counted
from rollbacks import engine
from rollbacks.engine import loop as runner
from rollbacks.health import check_health, prune_history
from rollbacks.models import System

WORKER = f"{socket.gethostname()}"


@shared_task(ignore_result=True)
def check_all_health() -> None:
    """Beat: fan out one probe per system that has a health check; prune old history."""
    prune_history()
    for system_id in System.objects.exclude(health_check={}).values_list("id", flat=True):
        check_system_health.delay(system_id=system_id)


@shared_task(ignore_result=True, max_retries=0)
def check_system_health(*, system_id: int) -> None:
    system = System.objects.filter(pk=system_id).first()
    if system is not None:
        check_health(system)


@shared_task(ignore_result=True, max_retries=0, acks_late=True)
def run_step(*, step_id: int) -> str:
    """Claim and run one step. A duplicate or late message finds nothing to claim.

    In a worker process with an execution loop (rollbacks/engine/loop.py) the step is handed to
    the loop, and this pool process is free again at once."""
    import os

    if (loop := runner.current()) is not None:
        loop.nudge(step_id)
        return "handed to the execution loop"
    return engine.step_run(step_id=step_id, worker=f"{WORKER}:{os.getpid()}")


@shared_task(ignore_result=True, max_retries=0, acks_late=True)
def run_steps(*, step_ids: list[int]) -> str:
    """The steps of one dispatch (a stage's), in one message (``outbox.batched``): handed to
    the execution loop together, or run one after another without one."""
    import os

    if (loop := runner.current()) is not None:
        for step_id in step_ids:
            loop.nudge(step_id)
        return "handed to the execution loop"
    for step_id in step_ids:
        engine.step_run(step_id=step_id, worker=f"{WORKER}:{os.getpid()}")
    return f"ran {len(step_ids)} steps"


@shared_task(ignore_result=True, max_retries=0)
def sweep() -> dict:
    """Beat: recover expired leases, lost messages and unsent outbox rows."""
    counts = engine.sweep()
    sweep_counted(counts)
    return counts
