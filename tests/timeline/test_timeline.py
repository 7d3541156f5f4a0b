"""External events (POST /api/v1/events) and the rollback timeline: what joins, the system
filter, the cursor fragment, and the query counts of the page and the fragment."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from governance.models import Alert
from ledger.models import Entry
from rollbacks import engine, runs, services
from rollbacks.tokens import token_create
from timeline import services as timeline
from timeline.models import Event
from timeline.services import Cursor, Scope

pytestmark = pytest.mark.django_db
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def make_rollback(actor, systems: list[str], steps_per_system: int = 1, *, key: str = "r"):
    run, _ = runs.run_register(process="p", external_id=key, actor="test", trace_id=TRACE)
    for slug in systems:
        for i in range(steps_per_system):
            runs.action_report(
                run=run,
                system_slug=slug,
                action_type="act",
                idempotency_key=f"{slug}-{i}",
                actor="test",
            )
    runs.run_fail(run=run, reason="boom", actor="test")
    return engine.rollback_plan(run=run, actor=actor, reason="undo it")


@pytest.fixture
def estate(make_system, alice):
    for slug, team in (("orders-api", "payments"), ("billing", "payments"), ("flags", "platform")):
        system = make_system(slug, team=team)
        services.contract_publish(
            system=system, actions={"act": {"compensation": {"kind": "simulated"}}}, actor="test"
        )
    return make_rollback(alice, ["orders-api", "billing"])


def post_event(client, token, body):
    return client.post(
        "/api/v1/events",
        json.dumps(body).replace("Infinity", "1e400"),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


# The API ---------------------------------------------------------------------------------


def test_an_event_is_stored_joined_to_its_rollback_and_not_ledgered(client, estate, alice):
    _, token = token_create(user=alice, name="ci")
    entries = Entry.objects.count()
    answer = post_event(
        client,
        token,
        {
            "kind": "deploy",
            "source": "ci",
            "title": "orders-api 2.4.1 deployed",
            "system": "orders-api",
            "rollback": estate.pk,
            "payload": {"version": "2.4.1"},
        },
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["system"] == "orders-api" and body["rollback"] == estate.pk
    assert body["run"] == estate.run_id  # implied by the rollback
    event = Event.objects.get(pk=body["id"])
    assert event.payload == {"version": "2.4.1"} and event.created_by == alice
    assert Entry.objects.count() == entries  # an observation, not an action


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"system": "nope"}, "system", "unknown system 'nope'"),
        ({"system": "flags"}, "system", "unknown system 'flags'"),  # another team's
        ({"kind": "party"}, "kind", "Input should be"),
        ({"title": ""}, "title", "at least 1"),
        ({"trace_id": "xyz"}, "trace_id", "pattern"),
        ({"run": 999999}, "run", "no process run #999999"),
        ({"occurred_at": "2024-05-01T12:00:00"}, "occurred_at", "time zone"),
        ({"colour": "red"}, "colour", "Unknown field"),
        # What PostgreSQL cannot store is a 400, not a 500 (issue 16, findings 6 to 8).
        ({"occurred_at": "2024-05-01T12:00:00+20:00"}, "occurred_at", "within ±15:59"),
        ({"occurred_at": "9999-12-31T23:00:00-05:00"}, "occurred_at", "years 1 to 9999"),
        ({"payload": {"n": float("inf")}}, "payload.n", "overflows to infinity"),
        ({"payload": {"\udbef\ude10\udbef": "x"}}, "payload", "lone UTF-16 surrogate"),
        ({"payload": {"k": ["\udc00"]}}, "payload.k[0]", "lone UTF-16 surrogate"),
    ],
)
def test_bad_events_are_refused_naming_the_field(client, estate, alice, body, field, words):
    _, token = token_create(user=alice, name="ci")
    answer = post_event(client, token, {"kind": "note", "source": "s", "title": "t"} | body)
    assert answer.status_code == 400, answer.content
    assert words in " ".join(answer.json()["errors"][field])
    assert not Event.objects.exists()


def test_auditors_and_the_anonymous_may_not_post_events(client, estate, carol):
    _, token = token_create(user=carol, name="audit")
    assert (
        post_event(client, token, {"kind": "note", "source": "s", "title": "t"}).status_code == 403
    )
    assert client.post("/api/v1/events", "{}", content_type="application/json").status_code == 401
    assert not Event.objects.exists()
    assert Entry.objects.filter(action="event.record", outcome="refused").count() == 1


def test_a_body_over_the_limit_is_refused(client, estate, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    _, token = token_create(user=alice, name="ci")
    body = {"kind": "note", "source": "s", "title": "t", "payload": {"x": "y" * 4000}}
    assert post_event(client, token, body).status_code == 413
    assert not Event.objects.exists()


# The timeline ------------------------------------------------------------------------------


def test_the_timeline_joins_every_source_newest_first(estate, alice, make_system):
    now = timezone.now()
    Event.objects.create(
        kind="deploy",
        source="ci",
        title="by rollback",
        rollback=estate,
        occurred_at=now,
        received_at=now,
    )
    Event.objects.create(
        kind="note", source="ci", title="by trace", trace_id=TRACE, occurred_at=now, received_at=now
    )
    Event.objects.create(
        kind="note",
        source="ci",
        title="unrelated",
        trace_id="a" * 32,
        occurred_at=now,
        received_at=now,
    )
    Alert.objects.create(
        group_key="g",
        fingerprint="f",
        status="firing",
        starts_at=now,
        labels={"alertname": "OrdersErrors", "system": "orders-api"},
        rollback=estate,
    )
    items, has_older = timeline.latest(Scope.of(estate))
    titles = [item.title for item in items]
    assert "by rollback" in titles and "by trace" in titles and "unrelated" not in titles
    assert "OrdersErrors" in titles and "run failed" in titles
    assert any(t.startswith("rollback.planned") for t in titles)
    assert sum(item.kind == "run_action" for item in items) == 2
    assert not any(t.startswith("run.action_reported") for t in titles)  # shown once, as actions
    assert [i.cursor for i in items] == sorted((i.cursor for i in items), reverse=True)
    assert not has_older


def test_a_trace_id_alone_joins_nothing_of_another_team(client, estate, alice, django_user_model):
    """Issue 16, finding 1: platform's operator registers a run under the trace id payments'
    run uses (the docs' example value). Payments' events and ledger entries under that trace
    stay off platform's timeline, and what platform posts under it stays off payments'."""
    from django.contrib.auth.models import Group

    from ledger.services import record
    from rollbacks.models import System

    platform_op = django_user_model.objects.create_user("pat")
    platform_op.groups.set([Group.objects.get(name=n) for n in ("operator", "team:platform")])
    theirs = make_rollback(platform_op, ["flags"], key="platform-run")  # the same TRACE
    assert theirs.trace_id == estate.trace_id == TRACE
    payments_token = token_create(user=alice, name="ci")[1]
    platform_token = token_create(user=platform_op, name="pci")[1]
    for body in (
        {"title": "card data exposure on billing", "system": "billing"},
        {"title": "payments' note without a system"},
    ):
        answer = post_event(
            client, payments_token, {"kind": "note", "source": "s", "trace_id": TRACE} | body
        )
        assert answer.status_code == 201, answer.content
    answer = post_event(
        client,
        platform_token,
        {"kind": "note", "source": "s", "title": "planted by platform", "trace_id": TRACE},
    )
    assert answer.status_code == 201
    with transaction.atomic():
        record(
            actor="user:alice",
            action="system.probe",
            subject=System.objects.get(slug="billing"),
            trace_id=TRACE,
            reason="billing probed",
        )

    platform_titles = [i.title + " " + i.detail for i in timeline.latest(Scope.of(theirs))[0]]
    assert not any("card data" in t or "payments'" in t or "billing" in t for t in platform_titles)
    assert any("planted by platform" in t for t in platform_titles)  # their own, on their own
    payments_titles = [i.title + " " + i.detail for i in timeline.latest(Scope.of(estate))[0]]
    assert any("card data exposure" in t for t in payments_titles)
    assert any("payments' note" in t for t in payments_titles)
    assert any("billing probed" in t for t in payments_titles)
    assert not any("planted by platform" in t for t in payments_titles)


def test_the_system_filter_keeps_that_systems_items(estate, alice):
    engine.rollback_release(
        rollback=estate, actor="test", reason="test"
    ) if estate.state == "draft" else None
    items, _ = timeline.latest(Scope.of(estate, "billing"))
    assert items and {item.system for item in items} == {"billing"}
    everything, _ = timeline.latest(Scope.of(estate))
    assert {"orders-api", "billing", ""} <= {item.system for item in everything}


def test_older_pages_follow_the_cursor(estate):
    now = timezone.now()
    for i in range(7):
        Event.objects.create(
            kind="note",
            source="s",
            title=f"n{i}",
            rollback=estate,
            occurred_at=now,
            received_at=now + timedelta(seconds=i),
        )
    scope = Scope.of(estate)
    first, more = timeline.latest(scope, limit=4)
    second, _ = timeline.latest(scope, limit=4, before=first[-1].cursor)
    assert more and [i.title for i in first] == ["n6", "n5", "n4", "n3"]
    assert [i.title for i in second][:3] == ["n2", "n1", "n0"]


def test_cursors_round_trip_and_bad_ones_are_refused():
    cursor = Cursor.parse("1700000000123456.ledger.42")
    assert str(cursor) == "1700000000123456.ledger.42"
    for bad in ("", "1.2", "x.ledger.1", "1.nothing.1", "1.ledger.x"):
        with pytest.raises(timeline.CursorError):
            Cursor.parse(bad)


# Pages, fragment, query counts ---------------------------------------------------------------


def test_the_page_shows_the_timeline_and_filters_without_javascript(client, estate, alice):
    client.force_login(alice)
    page = client.get(f"/rollbacks/{estate.pk}/").content.decode()
    assert 'id="timeline"' in page and "rollback.planned" in page and "run failed" in page
    assert 'id="timeline-poll"' in page  # the test client is WSGI: polling
    filtered = client.get(f"/rollbacks/{estate.pk}/?system=billing").content.decode()
    assert (
        'system=billing#timeline" aria-current="true">billing' in filtered
        and "run failed" not in filtered
    )


def test_the_fragment_answers_204_until_something_is_recorded(client, estate, alice):
    client.force_login(alice)
    page = client.get(f"/rollbacks/{estate.pk}/").content.decode()
    cursor = page.split("timeline?after=", 1)[1].split('"', 1)[0].split("&", 1)[0]
    url = f"/rollbacks/{estate.pk}/timeline?after={cursor}"
    assert client.get(url, headers={"HX-Request": "true"}).status_code == 204
    now = timezone.now()
    Event.objects.create(
        kind="deploy",
        source="ci",
        title="fresh deploy",
        rollback=estate,
        occurred_at=now,
        received_at=now,
    )
    answer = client.get(url, headers={"HX-Request": "true"})
    html = answer.content.decode()
    assert answer.status_code == 200 and "fresh deploy" in html and "rollback.planned" not in html
    assert 'id="timeline-poll"' in html and 'hx-swap-oob="true"' in html
    new_cursor = html.split("timeline?after=", 1)[1].split('"', 1)[0].split("&", 1)[0]
    assert client.get(f"/rollbacks/{estate.pk}/timeline?after={new_cursor}").status_code == 204
    assert client.get(f"/rollbacks/{estate.pk}/timeline?after=nonsense").status_code == 400


def test_outsiders_get_404_from_the_fragment(client, estate, mallory):
    client.force_login(mallory)
    url = f"/rollbacks/{estate.pk}/timeline?after=0.alert.0"
    assert client.get(url).status_code == 404


# Pinned. The fragment: session, user, the rollback through visible_to (the auditor check,
# then the rollback filtered by guardian's object permissions), and ONE timeline query. The page:
# session, user, visible_to (the auditor check, then the rollback filtered by guardian's
# object permissions as subqueries), the rollback with its joins, stages, every step as a
# row, their systems, the shown steps, their attempts, the operator role, governance's
# part, and ONE timeline query (a published dependency map adds one for its edges).
# Neither grows with the steps of the rollback or the size of the ledger.
FRAGMENT_QUERIES = 5
PAGE_QUERIES = 13


@pytest.mark.parametrize("steps_per_system", [1, 30])
def test_query_counts_are_pinned_at_two_sizes(
    client, estate, alice, django_assert_num_queries, steps_per_system
):
    client.force_login(alice)
    rollback = make_rollback(alice, ["orders-api", "billing"], steps_per_system, key="sized")
    now = timezone.now()
    Event.objects.create(
        kind="deploy", source="ci", title="d", rollback=rollback, occurred_at=now, received_at=now
    )
    base = f"/rollbacks/{rollback.pk}"
    for url in (f"{base}/", f"{base}/?system=billing"):
        with django_assert_num_queries(PAGE_QUERIES):
            assert client.get(url).status_code == 200
    for after, status in (("0.alert.0", 200), ("9999999999000000.alert.0", 204)):
        with django_assert_num_queries(FRAGMENT_QUERIES):
            assert client.get(f"{base}/timeline?after={after}").status_code == status
