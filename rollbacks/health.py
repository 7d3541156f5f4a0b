"""Probe a system's health check and keep its history."""

from __future__ import annotations

import time

import httpx
from django.db import transaction
from django.utils import timezone

from rollbacks.models import HealthCheck, System

PROBE_TIMEOUT_S = 3.0
SLOW_MS = 1000


def probe(system: System) -> tuple[str, int | None, str]:
    """(status, latency in ms, detail) for one system. Outside any transaction: it does I/O."""
    check = system.health_check or {}
    if "http" in check:
        started = time.monotonic()
        try:
            response = httpx.get(check["http"], timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return System.Health.RED, None, f"{type(exc).__name__}: {exc}"[:300]
        latency = int((time.monotonic() - started) * 1000)
        if response.status_code >= 500:
            return System.Health.RED, latency, f"HTTP {response.status_code}"
        if response.status_code >= 400 or latency > SLOW_MS:
            return System.Health.AMBER, latency, f"HTTP {response.status_code} in {latency} ms"
        return System.Health.GREEN, latency, f"HTTP {response.status_code} in {latency} ms"
    if "sql" in check:
        from rollbacks.targets import ping_target_database

        return ping_target_database(check["sql"])
    return System.Health.UNKNOWN, None, "no health check configured"


def check_health(system: System) -> HealthCheck:
    status, latency, detail = probe(system)
    now = timezone.now()
    with transaction.atomic():
        row = HealthCheck.objects.create(
            system=system, checked_at=now, status=status, latency_ms=latency, detail=detail
        )
        System.objects.filter(pk=system.pk).update(
            health=status, health_checked_at=now, health_detail=detail
        )
    return row


def prune_history(*, now=None) -> int:
    """Delete health checks older than ``HEALTH_HISTORY_RETENTION_DAYS``; the number deleted.

    The newest check of each system is kept whatever its age, so that a system whose probes
    stopped still shows when it was last seen."""
    from datetime import timedelta

    from django.conf import settings
    from django.db.models import Max

    from rollbacks.maintenance import delete_in_batches

    cutoff = (now or timezone.now()) - timedelta(days=settings.HEALTH_HISTORY_RETENTION_DAYS)
    newest = HealthCheck.objects.values("system_id").annotate(last=Max("checked_at")).values("last")
    old = HealthCheck.objects.filter(checked_at__lt=cutoff).exclude(checked_at__in=newest)
    return delete_in_batches(old)  # short transactions, however large the backlog
