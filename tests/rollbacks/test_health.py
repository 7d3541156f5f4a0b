"""Health checks probe real loopback targets and keep their history."""

from __future__ import annotations

import pytest

from rollbacks.health import check_health
from rollbacks.models import HealthCheck, System

pytestmark = pytest.mark.django_db


def test_http_health_check_is_green_then_red_when_the_target_fails(make_system, target_server):
    base, state = target_server
    system = make_system("orders-api", health_check={"http": f"{base}/orders-api/health"})
    check_health(system)
    system.refresh_from_db()
    assert system.health == System.Health.GREEN and system.health_checked_at is not None
    state.failures["/orders-api/health"] = 503
    check_health(system)
    system.refresh_from_db()
    assert system.health == System.Health.RED and "503" in system.health_detail
    assert list(HealthCheck.objects.filter(system=system).values_list("status", flat=True)) == [
        "red",
        "green",
    ]


def test_unreachable_target_is_red(make_system):
    system = make_system("gone", health_check={"http": "http://127.0.0.1:9/health"})
    row = check_health(system)
    assert row.status == System.Health.RED and "ConnectError" in row.detail


def test_sql_health_check_pings_a_named_target_database(make_system, monkeypatch, tmp_path):
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    system = make_system("orders-db", kind="database", health_check={"sql": "orders"})
    assert check_health(system).status == System.Health.GREEN
    missing = make_system("billing-db", kind="database", health_check={"sql": "billing"})
    row = check_health(missing)
    assert row.status == System.Health.UNKNOWN and "TARGET_DATABASE_BILLING" in row.detail


def test_system_without_health_check_is_unknown(make_system):
    assert check_health(make_system("quiet")).status == System.Health.UNKNOWN
