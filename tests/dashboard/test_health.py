"""Health history: before and after a rollback, the system page, pruning by retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.overview import health_around
from rollbacks import health
from rollbacks.models import HealthCheck, Rollback, System
from tests.dashboard.conftest import D
from tests.test_settings import _django

pytestmark = pytest.mark.django_db


def _check(slug, at, status):
    return HealthCheck.objects.create(
        system=System.objects.get(slug=slug), checked_at=at, status=status, detail=status
    )


def test_health_before_and_after_a_rollback(history, django_assert_max_num_queries):
    h = timedelta(hours=1)
    _check("orders-api", D + 9 * h, "green")
    before = _check("orders-api", D + 9 * h + timedelta(minutes=59), "amber")
    _check("orders-api", D + 10 * h + timedelta(minutes=15), "red")  # during: neither
    after = _check("orders-api", D + 10 * h + timedelta(minutes=31), "green")
    _check("orders-api", D + 11 * h, "red")
    r1 = Rollback.objects.get(pk=history.r1.pk)  # 10:00 → 10:30
    with django_assert_max_num_queries(2):
        (row,) = health_around(r1)
    assert (row.system.slug, row.before, row.after, row.is_worse) == (
        "orders-api",
        before,
        after,
        False,
    )
    r2 = Rollback.objects.get(pk=history.r2.pk)  # 12:00 → 13:00: red before, nothing after
    rows = {row.system.slug: row for row in health_around(r2)}
    assert rows["orders-api"].before.status == "red" and rows["orders-api"].after is None
    assert rows["billing"].before is None and rows["billing"].after is None


def test_the_partial_says_worse_after(history):
    _check("orders-api", D + timedelta(hours=9), "green")
    _check("orders-api", D + timedelta(hours=11), "red")
    from django.template.loader import render_to_string

    from dashboard.panels import health_around as panel
    from rollbacks.panels import PanelPage

    rollback = Rollback.objects.get(pk=history.r1.pk)
    health = panel(None, rollback, PanelPage(can_act=False, is_live=False, systems=[]))
    html = render_to_string(health.template, {**health.context, "rollback": rollback})
    assert "worse after" in html and "healthy" in html and "down" in html


def test_the_system_page_shows_its_history_and_rollbacks(client, history, alice):
    for minute in range(3):
        _check("orders-api", D + timedelta(minutes=minute), ("green", "amber", "red")[minute])
    client.force_login(alice)
    html = client.get("/systems/orders-api/").content.decode()
    assert html.count('<rect class="tick health-') == 3
    assert "1 healthy" in html and "1 degraded" in html and "1 down" in html
    for rollback in (history.r1, history.r2, history.r3, history.drill):
        assert f"Rollback #{rollback.pk}<" in html
    assert f"Rollback #{history.foreign.pk}<" not in html
    assert client.get("/systems/flags/").status_code == 404


def test_history_older_than_the_retention_is_pruned_but_each_systems_newest_stays(
    history, settings
):
    settings.HEALTH_HISTORY_RETENTION_DAYS = 30
    now = timezone.now()
    _check("orders-api", now - timedelta(days=40), "green")
    _check("orders-api", now - timedelta(days=31), "green")
    recent = _check("orders-api", now - timedelta(days=1), "amber")
    lonely = _check("billing", now - timedelta(days=60), "red")
    assert health.prune_history() == 2
    assert set(HealthCheck.objects.all()) == {recent, lonely}


def test_the_beat_task_prunes(history, settings):
    from rollbacks.tasks import check_all_health

    settings.HEALTH_HISTORY_RETENTION_DAYS = 1
    _check("orders-api", timezone.now() - timedelta(days=3), "green")
    _check("orders-api", timezone.now(), "green")
    check_all_health()  # no system has a health check here: nothing is queued
    assert HealthCheck.objects.count() == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "HEALTH_HISTORY_RETENTION_DAYS=0 is below its minimum of 1"),
        ("a month", "HEALTH_HISTORY_RETENTION_DAYS='a month' is not a whole number"),
    ],
)
def test_a_bad_retention_fails_loudly(value, message):
    result = _django({"DEBUG": "1", "HEALTH_HISTORY_RETENTION_DAYS": value}, "check")
    assert result.returncode != 0 and message in result.stderr
