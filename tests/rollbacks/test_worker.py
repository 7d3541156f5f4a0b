"""A real Celery worker process, on Redis and PostgreSQL, runs the health checks that beat
schedules."""

from __future__ import annotations

import time

import pytest

from rollbacks.models import HealthCheck, System
from rollbacks.tasks import check_all_health

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_worker_process_runs_health_checks_against_real_targets(
    worker_process, make_system, target_server
):
    base, state = target_server
    up = make_system("orders-api", health_check={"http": f"{base}/orders-api/health"})
    state.failures["/billing-api/health"] = 500
    down = make_system("billing-api", health_check={"http": f"{base}/billing-api/health"})
    make_system("no-check")

    check_all_health.delay()

    _wait_for(lambda: HealthCheck.objects.count() >= 2)
    up.refresh_from_db()
    down.refresh_from_db()
    assert up.health == System.Health.GREEN
    assert down.health == System.Health.RED and "500" in down.health_detail
    time.sleep(0.5)
    assert HealthCheck.objects.count() == 2  # the system without a check was not probed
    assert "rollbacks.tasks.check_system_health" in worker_process.log_path.read_text()
