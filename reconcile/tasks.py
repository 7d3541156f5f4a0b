"""Celery tasks: thin, ids only; the services do the work."""

import os
import socket

from celery import shared_task

from reconcile import services


@shared_task(ignore_result=True, max_retries=0, acks_late=True)
def run_reconciliation(*, reconciliation_id: int) -> str:
    """Run one queued reconciliation. A duplicate or late message finds nothing to claim."""
    return services.run_reconciliation(
        reconciliation_id=reconciliation_id, worker=f"{socket.gethostname()}:{os.getpid()}"
    )


@shared_task(ignore_result=True, max_retries=0)
def sweep() -> dict:
    """Beat: hand on reconciliations whose worker died; re-send lost messages."""
    return services.sweep()
