"""Celery tasks: thin, ids only; the services do the work."""

from celery import shared_task

from rollbacks.health import check_health
from rollbacks.models import System


@shared_task(ignore_result=True)
def check_all_health() -> None:
    """Beat: fan out one probe per system that has a health check."""
    for system_id in System.objects.exclude(health_check={}).values_list("id", flat=True):
        check_system_health.delay(system_id=system_id)


@shared_task(ignore_result=True, max_retries=0)
def check_system_health(*, system_id: int) -> None:
    system = System.objects.filter(pk=system_id).first()
    if system is not None:
        check_health(system)
