"""The metrics' numbers, exactly, on the known history of ``conftest.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dashboard import metrics
from dashboard.metrics import Filters
from rollbacks.models import System

pytestmark = pytest.mark.django_db
MARCH = Filters(since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC))


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


def test_totals_for_who_sees_everything(history, carol):
    m = metrics.compute(carol, MARCH)
    t = m.totals
    assert (t["count"], t["succeeded"], t["failed"], t["aborted"]) == (4, 2, 1, 1)
    assert t["latency_avg"] == minutes((30 + 60 + 10 + 5) / 4) and t["latency_max"] == minutes(60)
    assert t["approval_avg"] == minutes(10) and t["approved"] == 1
    assert t["mttr_avg"] == minutes((35 + 30) / 2) and t["recovered"] == 2
    assert t["mttr_max"] == minutes(35)
    assert t["near_misses"] == 1
    assert m.drills == 1
    assert m.compensation == {
        "first_time": 1,
        "after_retry": 2,
        "by_hand": 0,
        "failed": 1,
        "skipped": 1,
        "cancelled": 1,
    }
    assert t["success_rate"] == pytest.approx(3 / 5)
    assert [n["pk"] for n in m.near_misses] == [history.r3.pk]
    assert m.near_misses[0]["retried_steps"] == 1


def test_over_time_by_day_and_by_week(history, carol):
    days = metrics.compute(carol, MARCH).over_time
    assert [(r["period"].date().isoformat(), r["count"]) for r in days] == [
        ("2026-03-10", 3),
        ("2026-03-11", 1),
    ]
    assert days[0]["latency_avg"] == minutes((30 + 60 + 5) / 3)
    assert days[0]["failed"] == 1 and days[1]["near_misses"] == 1
    assert days[0]["mttr_avg"] == minutes(35) and days[1]["mttr_avg"] == minutes(30)
    weeks = metrics.compute(
        carol, Filters(since=MARCH.since, until=MARCH.until, bucket="week")
    ).over_time
    assert [(r["period"].date().isoformat(), r["count"]) for r in weeks] == [("2026-03-09", 4)]


def test_each_rollback_counts_once_per_system_it_touched(history, carol):
    rows = {r["system__slug"]: r for r in metrics.compute(carol, MARCH).per_system}
    assert {k: (v["count"], v["failed"]) for k, v in rows.items()} == {
        "billing": (1, 1),
        "flags": (1, 0),
        "orders-api": (3, 1),  # r2 has two steps on it, and counts once
    }
    assert rows["orders-api"]["latency_avg"] == minutes((30 + 60 + 10) / 3)
    assert rows["orders-api"]["mttr_avg"] == minutes(32.5)


def test_stage_durations(history, carol):
    (stage,) = metrics.compute(carol, MARCH).stages
    assert (stage["index"], stage["count"]) == (1, 3)
    assert stage["avg"] == minutes((18 + 20 + 10) / 3) and stage["max"] == minutes(20)


def test_an_operator_counts_only_what_they_see_and_a_system_filter_narrows(history, alice, carol):
    m = metrics.compute(alice, MARCH)
    assert m.totals["count"] == 3 and m.drills == 1
    assert "flags" not in {r["system__slug"] for r in m.per_system}
    flags = Filters(since=MARCH.since, until=MARCH.until, system=System.objects.get(slug="flags"))
    assert metrics.compute(carol, flags).totals["count"] == 1
    billing = Filters(
        since=MARCH.since, until=MARCH.until, system=System.objects.get(slug="billing")
    )
    assert metrics.compute(carol, billing).totals["failed"] == 1


def test_the_period_bounds_the_rollbacks(history, carol):
    first_day = Filters(since=MARCH.since, until=datetime(2026, 3, 11, tzinfo=UTC))
    assert metrics.compute(carol, first_day).totals["count"] == 3


def test_metrics_cost_a_fixed_number_of_queries(history, carol, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        metrics.compute(carol, MARCH)


def test_the_page_shows_the_figures_and_refuses_a_bad_period(client, history, carol):
    client.force_login(carol)
    response = client.get(
        "/metrics/", {"since": "2026-03-01", "until": "2026-03-31", "bucket": "day"}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "26 min 15 s" in html  # the mean latency
    assert 'id="drill-count">1 drill<' in html
    assert "60.0 %" in html
    response = client.get(
        "/metrics/", {"since": "2026-03-31", "until": "2026-03-01", "bucket": "day"}
    )
    assert response.status_code == 400
    assert "To (inclusive): “To” must be on or after “From”." in response.content.decode()
    response = client.get(
        "/metrics/", {"since": "2026-03-01", "until": "2026-03-31", "bucket": "year"}
    )
    assert response.status_code == 400 and "Group by:" in response.content.decode()
    response = client.get(
        "/metrics/", {"since": "2024-01-01", "until": "2026-03-31", "bucket": "day"}
    )
    assert "at most 366 days" in response.content.decode()
