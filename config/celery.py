"""The Celery app. Tasks carry ids only; the database is the source of truth."""

import os

from celery import Celery
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("unwind")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _keep_database_connections(**_kwargs) -> None:
    """A worker keeps its database connection across tasks (``WORKER_DB_CONN_MAX_AGE``).

    Set in the main process before the pool forks, so every child inherits it; only the
    worker's connections change (the web keeps ``DATABASE_CONN_MAX_AGE``). Health checks make
    the first query of a task find out whether a kept connection still works (a PostgreSQL
    restart, an idle timeout) and reconnect instead of failing the task.
    """
    from django.conf import settings
    from django.db import connections

    if settings.WORKER_DB_CONN_MAX_AGE:
        for alias in connections:
            connections.settings[alias]["CONN_MAX_AGE"] = settings.WORKER_DB_CONN_MAX_AGE
            connections.settings[alias]["CONN_HEALTH_CHECKS"] = True


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**_kwargs) -> None:
    # What Django does around every request: drop a connection that is too old or was left
    # unusable by an error, and re-arm the health check for the next task. Never inside a
    # transaction (an eager task called from one, in a test): that would break it.
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


@worker_process_init.connect
def _init_tracing(**_kwargs) -> None:
    # Prefork children must create their own tracer provider (FACTS: not before the fork).
    from config.telemetry import setup_tracing

    setup_tracing(instrument_celery=True)


@worker_process_init.connect
def _start_execution_loop(**_kwargs) -> None:
    """Each pool process runs its own execution loop (rollbacks/engine/loop.py, docs/engine.md):
    ``run_step`` hands it the step, and many steps are in flight per process."""
    import socket

    from django.conf import settings

    if settings.ENGINE_RUNNER:
        from rollbacks.engine import loop as runner

        runner.start(worker=f"{socket.gethostname()}:{os.getpid()}")


@worker_process_shutdown.connect
def _stop_execution_loop(**_kwargs) -> None:
    # A warm shutdown lets the steps in flight finish and be recorded; a cold one leaves
    # them to their leases.
    from rollbacks.engine import loop as runner

    if (loop := runner.current()) is not None:
        loop.stop(timeout=10)
