"""The Celery app. Tasks carry ids only; the database is the source of truth."""

import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("unwind")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _init_tracing(**_kwargs) -> None:
    # Prefork children must create their own tracer provider (FACTS: not before the fork).
    from config.telemetry import setup_tracing

    setup_tracing(instrument_celery=True)
