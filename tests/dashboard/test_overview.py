"""The overview: what is under way, waits for me, is unhealthy or failed, and only what I see."""

from __future__ import annotations

import pytest
from django.utils import timezone

from dashboard import overview
from governance.models import Notification
from rollbacks.models import Rollback, Step, System
from tests.dashboard.conftest import _plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def under_way(history, alice):
    """Two rollbacks awaiting approval: alice's (payments) and pat's (platform)."""
    own = _plan("own-now", ["orders-api", "billing"], alice)
    foreign = _plan("foreign-now", ["flags"], history.pat)
    for rollback in (history.r2, history.foreign):
        for channel in ("email", "webhook"):
            Notification.objects.create(
                kind=Notification.Kind.ROLLBACK_FAILED,
                rollback=rollback,
                subject_key=str(rollback.pk),
                channel=channel,
                sent_at=timezone.now() if channel == "email" else None,
            )
    return own, foreign


def test_an_operator_sees_only_their_teams(under_way, history, alice):
    own, foreign = under_way
    o = overview.overview(alice)
    assert [r.pk for r in o.active] == [own.pk]
    active = o.active[0]
    assert (active.step_count, active.done_count, active.stage_count) == (2, 0, 1)
    assert active.state == Rollback.State.AWAITING_APPROVAL and not active.has_break_glass
    assert {s.slug for s in o.systems} == {"orders-api", "billing"}
    assert [r.pk for r in o.failures] == [history.r2.pk]
    # r2 ended (failed): its failed step halts nothing any more, so it needs no action.
    assert o.halted_steps == [] and o.waiting_steps == [] and o.failed_runs == []
    assert [(e["rollback_id"], e["channels"], e["unsent"]) for e in o.escalations] == [
        (history.r2.pk, 2, 1)
    ]
    assert o.pending == [] and not o.is_approver


def test_an_approver_finds_what_waits_for_them(under_way, bob):
    own, _ = under_way
    o = overview.overview(bob)
    assert o.is_approver and [r.pk for r in o.pending] == [own.pk]


def test_an_auditor_sees_everything_running_first(under_way, history, carol):
    own, foreign = under_way
    Rollback.objects.filter(pk=foreign.pk).update(state=Rollback.State.RUNNING)
    o = overview.overview(carol)
    assert [r.pk for r in o.active] == [foreign.pk, own.pk]
    assert len(o.escalations) == 2 and len(o.systems) == 3


def test_the_page_says_health_in_words_with_the_time_and_refreshes_as_a_fragment(
    client, under_way, alice
):
    checked = timezone.now()
    System.objects.filter(slug="orders-api").update(
        health="red", health_checked_at=checked, health_detail="HTTP 503"
    )
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert '<span class="health health-red">down</span>' in html
    assert f'datetime="{timezone.localtime(checked).isoformat()}' in html
    assert "1 down" in html and "1 unknown" in html
    assert 'hx-trigger="every 10s"' in html
    fragment = client.get("/", headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert fragment.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<div id="overview-live"')
    assert "HX-Request" in fragment["Vary"]


def test_the_overview_costs_the_same_queries_however_many_rollbacks(
    client, under_way, carol, alice, django_assert_max_num_queries
):
    client.force_login(carol)
    # 14 before "Needs action" (issue 15) added the failed runs without a rollback and the
    # escalated steps' current states, one query each.
    with django_assert_max_num_queries(16):
        assert client.get("/").status_code == 200
    for i in range(5):
        _plan(f"more-{i}", ["orders-api"], alice)
    with django_assert_max_num_queries(16):
        assert client.get("/").status_code == 200


def test_an_expired_session_polling_the_overview_goes_to_the_login_page(client, db):
    response = client.get("/", headers={"HX-Request": "true"})
    assert response.status_code == 200 and response["HX-Redirect"] == "/login/?next=/"
    assert client.get("/")["Location"] == "/login/?next=/"


def _links(html: str) -> list[str]:
    """The id of each link in the fragment ('' for a link without one)."""
    import re

    return [
        (re.search(r'\bid="([^"]+)"', tag) or [None, ""])[1]
        for tag in re.findall(r"<a\b[^>]*>", html)
    ]


@pytest.mark.parametrize("who", ["bob", "carol"])
def test_every_link_of_the_refreshed_fragment_keeps_its_id_so_focus_survives(
    client, under_way, who, request
):
    """htmx 2 puts the focus back on the element with the focused one's id after a swap:
    every link needs an id, unique on the page and the same from one refresh to the next."""
    client.force_login(request.getfixturevalue(who))
    fetch = lambda: client.get("/", headers={"HX-Request": "true"}).content.decode()  # noqa: E731
    first, second = _links(fetch()), _links(fetch())
    assert len(first) >= 5 and "" not in first
    assert len(set(first)) == len(first) and first == second


def test_needs_action_lists_failed_runs_steps_and_halted_stages_until_resolved(history, alice):
    from rollbacks import runs

    run, _ = runs.run_register(process="p", external_id="no-rollback-yet", actor="test")
    runs.action_report(
        run=run, system_slug="orders-api", action_type="act", idempotency_key="n1", actor="test"
    )
    runs.run_fail(run=run, reason="boom", actor="test")
    rollback = _plan("halting", ["orders-api", "billing"], alice)
    Rollback.objects.filter(pk=rollback.pk).update(state=Rollback.State.RUNNING)
    waiting, failed = rollback.steps.order_by("pk")
    Step.objects.filter(pk=waiting.pk).update(state=Step.State.WAITING_HUMAN)
    Step.objects.filter(pk=failed.pk).update(state=Step.State.FAILED, attempts=3)
    for kind, key in (
        (Notification.Kind.STEP_NEEDS_HUMAN, f"step:{failed.pk}:failed:3"),
        (Notification.Kind.APPROVAL_OVERDUE, "since:1"),
    ):
        Notification.objects.create(kind=kind, rollback=rollback, subject_key=key, channel="email")

    o = overview.overview(alice)
    assert o.needs_action and run.pk in [r.pk for r in o.failed_runs]
    assert [s.pk for s in o.waiting_steps] == [waiting.pk]
    assert [s.pk for s in o.halted_steps] == [failed.pk]
    # The step's escalation stands; the overdue approval's cause is gone (it is running).
    assert [e["kind"] for e in o.escalations if e["rollback_id"] == rollback.pk] == [
        Notification.Kind.STEP_NEEDS_HUMAN
    ]

    # Retried (attempt 4 under way): the escalation about attempt 3 leaves, the step too.
    Step.objects.filter(pk=failed.pk).update(state=Step.State.RUNNING, attempts=4)
    Step.objects.filter(pk=waiting.pk).update(state=Step.State.SUCCEEDED)
    o = overview.overview(alice)
    assert o.waiting_steps == [] and o.halted_steps == []
    assert [e for e in o.escalations if e["rollback_id"] == rollback.pk] == []


def test_a_drill_under_way_counts_its_steps_as_rehearsed(client, history, alice):
    drill = _plan("drill-now", ["orders-api"], alice, is_drill=True)
    client.force_login(alice)
    row = client.get("/").content.decode().split(f'id="active-{drill.pk}"')[1].split("</tr>")[0]
    assert "0 of 1 steps rehearsed or done" in row
