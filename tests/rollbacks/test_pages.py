"""The operator's pages: runs, rollbacks, the live rollback page and its buttons, per member
of the cast. Data is made through the services; no worker runs, so step states that a
worker would reach are either driven with ``engine.step_run`` (simulated steps, no network)
or set directly with ``Step.objects.filter(...).update(state=...)``."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ledger.models import Entry
from rollbacks import engine, runs, services
from rollbacks.models import Attempt, Rollback, Step

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def estate(make_system):
    """orders-api (manual compensation) is unwound before orders-db (simulated)."""
    db = make_system("orders-db", kind="database", tier=1)
    api = make_system("orders-api")
    make_system("flags", team="platform", kind="feature_flag", tier=3)
    services.contract_publish(
        system=db,
        actions={"create_order": {"compensation": {"kind": "simulated", "latency_ms": 0}}},
        actor="test",
    )
    services.contract_publish(
        system=api,
        actions={
            "reserve_stock": {
                "compensation": {
                    "kind": "manual",
                    "instructions": "Release reservation {params.reservation} by hand.",
                }
            }
        },
        actor="test",
    )
    services.dependency_map_publish(edges=[("before", "orders-api", "orders-db")], actor="test")
    return db, api


@pytest.fixture
def make_run(estate):
    """A failed run with ``orders`` create_order actions on orders-db and one reservation."""
    counter = iter(range(1, 10_000))

    def make(orders: int = 2, *, reservation: bool = True, failed: bool = True):
        n = next(counter)
        run, _ = runs.run_register(process="checkout", external_id=f"ext-{n}", actor="test")
        for i in range(orders):
            runs.action_report(
                run=run,
                system_slug="orders-db",
                action_type="create_order",
                idempotency_key=f"order-{n}-{i}",
                params={"order_id": 1000 + i},
                before={"status": "none"},
                after={"status": "created", "order_id": 1000 + i},
                actor="test",
            )
        if reservation:
            runs.action_report(
                run=run,
                system_slug="orders-api",
                action_type="reserve_stock",
                idempotency_key=f"reserve-{n}",
                params={"reservation": f"R-{n}"},
                actor="test",
            )
        if failed:
            runs.run_fail(run=run, reason="payment provider timed out", actor="test")
        return run

    return make


@pytest.fixture
def run(make_run):
    return make_run()


@pytest.fixture
def rollback(run, alice):
    return engine.rollback_plan(run=run, actor=alice, reason="checkout broke orders")


def _login(client, user):
    client.force_login(user)
    return client


def _text(response) -> str:
    return response.content.decode()


def _steps(rollback: Rollback, **filters):
    return Step.objects.filter(rollback=rollback, **filters).order_by("stage__index", "id")


def _state(rollback: Rollback) -> str:
    rollback.refresh_from_db()
    return rollback.state


def _action(rollback, action):
    return reverse("rollback-action", kwargs={"pk": rollback.pk, "action": action})


def _step_url(step, action):
    return reverse(
        "step-action", kwargs={"pk": step.rollback_id, "step_id": step.pk, "action": action}
    )


def _running(rollback, alice):
    return engine.rollback_start(rollback=rollback, actor=alice)


def _assert_no_inline_script_or_style(text: str) -> None:
    for tag in re.findall(r"<script\b[^>]*>", text):
        assert " src=" in tag, tag
    assert not re.search(r"\sstyle\s*=", text), "inline style attribute"
    assert "<style" not in text
    assert "hx-on" not in text


# Lists --------------------------------------------------------------------------------------


def test_run_list_shows_visible_runs_newest_first_with_latest_rollback(
    client, alice, make_run, rollback
):
    newer = make_run(orders=1, reservation=False, failed=False)
    response = _login(client, alice).get(reverse("runs"))
    text = _text(response)
    assert response.status_code == 200
    assert text.index(newer.external_id) < text.index(rollback.run.external_id)
    assert "checkout" in text and "payment provider timed out" in text
    assert '<td data-label="Actions">3</td>' in text  # 2 orders + 1 reservation
    assert f'href="{reverse("rollback", args=[rollback.pk])}"' in text
    assert "approved" in text  # the latest rollback's state
    assert 'href="/runs/" aria-current="page"' in text


def test_run_list_counts_every_action_even_on_other_teams_systems(client, alice, make_run):
    run = make_run(orders=1, reservation=False)
    runs.action_report(
        run=run, system_slug="flags", action_type="flip", idempotency_key="f-1", actor="test"
    )
    text = _text(_login(client, alice).get(reverse("runs")))
    assert '<td data-label="Actions">2</td>' in text


def test_outsider_sees_no_run_and_no_rollback(client, mallory, rollback):
    _login(client, mallory)
    runs_page = _text(client.get(reverse("runs")))
    rollbacks_page = _text(client.get(reverse("rollbacks")))
    assert "ext-1" not in runs_page and "No process run you can see" in runs_page
    assert "checkout" not in rollbacks_page and "No rollback you can see" in rollbacks_page


def test_rollback_list_puts_active_rollbacks_first(client, alice, make_run):
    first = engine.rollback_plan(run=make_run(), actor=alice, reason="first")
    _running(first, alice)
    second = engine.rollback_plan(run=make_run(), actor=alice, reason="second")
    third = engine.rollback_plan(run=make_run(), actor=alice, reason="third")
    engine.rollback_abort(rollback=third, actor=alice, reason="wrong run")
    response = _login(client, alice).get(reverse("rollbacks"))
    text = _text(response)
    assert response.status_code == 200
    positions = [text.index(f"Rollback #{r.pk}<") for r in (first, second, third)]
    assert positions == sorted(positions)  # running, then approved, then aborted
    assert "0 of 3" in text and "running" in text and "aborted" in text
    assert 'href="/rollbacks/" aria-current="page"' in text


# The run page and planning ------------------------------------------------------------------


def test_run_page_shows_actions_in_order_and_the_plan_form(client, alice, run):
    response = _login(client, alice).get(reverse("run", args=[run.pk]))
    text = _text(response)
    assert response.status_code == 200
    assert text.index("create_order") < text.index("reserve_stock")
    assert "orders-db" in text and "orders-api" in text
    assert "payment provider timed out" in text
    assert "{&quot;order_id&quot;: 1000}" in text  # params, compactly
    assert "{&quot;status&quot;: &quot;none&quot;}" in text  # the before-image
    assert '<label for="id_reason">Reason</label>' in text
    assert '<textarea name="reason"' in text and "required" in text
    assert 'type="checkbox" name="is_drill"' in text
    assert f'action="{reverse("run-plan", args=[run.pk])}"' in text
    assert ">Plan rollback</button>" in text


def test_planning_creates_the_rollback_and_redirects_to_it(client, alice, run):
    response = _login(client, alice).post(
        reverse("run-plan", args=[run.pk]), {"reason": "undo checkout", "is_drill": "on"}
    )
    rollback = Rollback.objects.get(run=run)
    assert response.status_code == 302
    assert response["Location"] == reverse("rollback", args=[rollback.pk])
    assert rollback.reason == "undo checkout" and rollback.is_drill
    assert rollback.requested_by == alice and rollback.state == Rollback.State.APPROVED
    page = _text(client.get(response["Location"]))
    assert f"Rollback #{rollback.pk} planned" in page  # the message
    assert "drill" in page


def test_planning_without_a_reason_is_refused_with_the_error_next_to_the_field(client, alice, run):
    response = _login(client, alice).post(reverse("run-plan", args=[run.pk]), {"reason": "  "})
    text = _text(response)
    assert response.status_code == 400
    assert "Say why this run is being rolled back." in text
    assert (
        text.index('for="id_reason"')
        < text.index("Say why this run")
        < text.index("Plan rollback</button>")
    )
    assert 'aria-invalid="true"' in text
    assert not Rollback.objects.exists()


def test_an_engine_error_re_renders_the_form_and_writes_nothing(client, alice, make_run):
    run = make_run(orders=0, reservation=False)  # nothing to undo
    runs.action_report(
        run=run,
        system_slug="orders-db",
        action_type="create_order",
        idempotency_key="failed-1",
        status="failed",
        actor="test",
    )
    response = _login(client, alice).post(reverse("run-plan", args=[run.pk]), {"reason": "x"})
    assert response.status_code == 400
    assert "there is nothing to undo" in _text(response)
    assert not Rollback.objects.exists()


def test_a_second_plan_while_one_is_under_way_is_refused(client, alice, rollback):
    _login(client, alice)
    page = _text(client.get(reverse("run", args=[rollback.run.pk])))
    assert "A rollback of this run is under way" in page and "Plan rollback</button>" not in page
    response = client.post(reverse("run-plan", args=[rollback.run.pk]), {"reason": "again"})
    assert response.status_code == 400
    assert "already has a rollback under way" in _text(response)
    assert Rollback.objects.count() == 1


# The rollback page --------------------------------------------------------------------------


def test_rollback_page_shows_the_plan_as_stages_and_steps(client, alice, rollback):
    response = _login(client, alice).get(reverse("rollback", args=[rollback.pk]))
    text = _text(response)
    assert response.status_code == 200
    assert "checkout broke orders" in text and "alice" in text
    assert "v1 (pinned)" in text
    plan = text[text.index('id="plan-title"') :]  # the first screen names the stages too
    assert plan.index("Stage 1") < plan.index("orders-api") < plan.index("Stage 2")
    manual, *orders = _steps(rollback)
    assert "Release reservation R-1 by hand." in text  # the rendered instructions
    assert "the contract&#x27;s compensation is manual" in text  # manual_reason
    assert "simulated" in text and "{&quot;latency_ms&quot;: 0}" not in text
    assert "Latency ms" in text
    for step in (manual, *orders):
        assert f"Step {step.pk}: undo" in text and step.idempotency_key in text
        assert f'id="step-{step.pk}-detail"' in text
    assert "0 of 3" in text  # attempts
    assert ">Start rollback</button>" in text
    assert ">Abort rollback</button>" in text and 'name="confirm" required' in text
    assert "Pause</button>" not in text and "Resume</button>" not in text
    assert f">Skip step {manual.pk}</button>" in text
    assert "Retry step" not in text and "Resolve step" not in text
    assert 'hx-trigger="every 1s"' in text and 'id="rollback-status"' in text
    assert "Refresh</a>" in text


def test_drill_is_marked_on_every_page(client, alice, run):
    rollback = engine.rollback_plan(run=run, actor=alice, reason="practice", is_drill=True)
    _login(client, alice)
    for url in (reverse("rollbacks"), reverse("runs"), reverse("run", args=[run.pk])):
        assert '<span class="tag drill">drill</span>' in _text(client.get(url))
    page = _text(client.get(reverse("rollback", args=[rollback.pk])))
    assert "Yes: a practice run" in page


def test_outsider_gets_404_on_run_and_rollback_pages_and_actions(client, mallory, rollback):
    _login(client, mallory)
    step = _steps(rollback).first()
    assert client.get(reverse("run", args=[rollback.run.pk])).status_code == 404
    assert client.get(reverse("rollback", args=[rollback.pk])).status_code == 404
    assert (
        client.post(reverse("run-plan", args=[rollback.run.pk]), {"reason": "x"}).status_code == 404
    )
    assert client.post(_action(rollback, "start")).status_code == 404
    assert client.post(_step_url(step, "skip"), {"reason": "x", "confirm": "on"}).status_code == 404
    assert _state(rollback) == Rollback.State.APPROVED


def test_auditor_reads_every_page_but_sees_no_button(client, carol, rollback):
    _login(client, carol)
    run_page = _text(client.get(reverse("run", args=[rollback.run.pk])))
    page = client.get(reverse("rollback", args=[rollback.pk]))
    text = _text(page)
    assert page.status_code == 200 and "checkout broke orders" in text
    assert "Plan rollback</button>" not in run_page and "create_order" in run_page
    assert "Start rollback" not in text and "Abort rollback" not in text
    assert "Skip step" not in text
    assert text.count("<form") == 1  # only "Log out"
    assert _text(client.get(reverse("rollbacks"))).count(f"Rollback #{rollback.pk}<") == 1


def test_auditor_posts_are_refused_and_change_nothing(client, carol, alice, rollback, run):
    _login(client, carol)
    step = _steps(rollback).first()
    posts = [
        (_action(rollback, "start"), {}),
        (_action(rollback, "abort"), {"reason": "x", "confirm": "on"}),
        (_step_url(step, "skip"), {"reason": "x", "confirm": "on"}),
        (_step_url(step, "resolve"), {"note": "x"}),
        (reverse("run-plan", args=[run.pk]), {"reason": "x"}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
    assert _state(rollback) == Rollback.State.APPROVED
    assert Rollback.objects.count() == 1
    assert set(_steps(rollback).values_list("state", flat=True)) == {Step.State.PENDING}
    refused = Entry.objects.filter(actor="user:carol", outcome="refused")
    assert refused.count() == len(posts)


def test_approver_without_operator_role_gets_403(client, bob, rollback):
    response = _login(client, bob).post(_action(rollback, "start"))
    assert response.status_code == 403
    assert _state(rollback) == Rollback.State.APPROVED


# Buttons ------------------------------------------------------------------------------------


def test_start_pause_resume_through_the_views(client, alice, rollback):
    _login(client, alice)
    page = reverse("rollback", args=[rollback.pk])
    response = client.post(_action(rollback, "start"))
    assert response.status_code == 302 and response["Location"] == page
    assert _state(rollback) == Rollback.State.RUNNING
    text = _text(client.get(page))
    assert f"Rollback #{rollback.pk} started." in text
    assert ">Pause</button>" in text and "Start rollback</button>" not in text

    client.post(_action(rollback, "pause"))
    assert _state(rollback) == Rollback.State.PAUSED
    assert ">Resume</button>" in _text(client.get(page))

    client.post(_action(rollback, "resume"))
    assert _state(rollback) == Rollback.State.RUNNING


def test_an_action_the_state_does_not_allow_shows_the_engine_error(client, alice, rollback):
    _login(client, alice)
    response = client.post(_action(rollback, "pause"), follow=True)
    assert response.status_code == 200
    text = _text(response)
    assert f"rollback #{rollback.pk} is approved: cannot" in text
    assert 'class="message error"' in text
    assert _state(rollback) == Rollback.State.APPROVED


def test_abort_needs_a_reason_and_a_confirmation(client, alice, rollback):
    _login(client, alice)
    response = client.post(_action(rollback, "abort"), {"reason": "wrong run"}, follow=True)
    assert "Tick “I understand…”" in _text(response)
    assert _state(rollback) == Rollback.State.APPROVED
    client.post(_action(rollback, "abort"), {"reason": " ", "confirm": "on"})
    assert _state(rollback) == Rollback.State.APPROVED

    response = client.post(
        _action(rollback, "abort"), {"reason": "wrong run", "confirm": "on"}, follow=True
    )
    text = _text(response)
    assert _state(rollback) == Rollback.State.ABORTED
    assert f"Rollback #{rollback.pk} aborted" in text
    assert "What was undone" in text and "What was not undone" in text
    assert re.search(
        r"create_order on orders-db <span class=\"params\">[^<]*</span>: cancelled", text
    )
    assert 'hx-trigger="every 1s"' not in text and "Abort rollback" not in text


def test_retry_a_failed_step(client, alice, rollback):
    _running(rollback, alice)
    step = _steps(rollback, is_manual=False).first()
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED, last_error="boom")
    _login(client, alice)
    text = _text(client.get(reverse("rollback", args=[rollback.pk])))
    assert f">Retry step {step.pk}</button>" in text and "boom" in text
    response = client.post(_step_url(step, "retry"))
    assert response.status_code == 302
    step.refresh_from_db()
    assert step.state == Step.State.PENDING and step.last_error == ""


def test_skip_a_step_needs_a_justification_and_a_confirmation(client, alice, rollback):
    _running(rollback, alice)
    step = _steps(rollback).first()  # the manual step, waiting for a human
    assert step.state == Step.State.WAITING_HUMAN
    _login(client, alice)
    client.post(_step_url(step, "skip"), {"reason": "done elsewhere"})
    step.refresh_from_db()
    assert step.state == Step.State.WAITING_HUMAN
    response = client.post(
        _step_url(step, "skip"), {"reason": "done elsewhere", "confirm": "on"}, follow=True
    )
    step.refresh_from_db()
    assert step.state == Step.State.SKIPPED and step.human_note == "done elsewhere"
    assert f"Step {step.pk} skipped" in _text(response)


def test_resolve_a_manual_step_then_run_the_rest_to_success(client, alice, rollback):
    _running(rollback, alice)
    manual = _steps(rollback).first()
    _login(client, alice)
    page = reverse("rollback", args=[rollback.pk])
    assert f">Resolve step {manual.pk}</button>" in _text(client.get(page))
    client.post(_step_url(manual, "resolve"), {"note": ""})
    manual.refresh_from_db()
    assert manual.state == Step.State.WAITING_HUMAN

    client.post(_step_url(manual, "resolve"), {"note": "released R-1 in the admin"})
    manual.refresh_from_db()
    assert manual.state == Step.State.SUCCEEDED
    for step in _steps(rollback, is_manual=False):
        assert engine.step_run(step_id=step.pk) == "succeeded"
    assert _state(rollback) == Rollback.State.SUCCEEDED

    text = _text(client.get(page))
    assert "What was undone" in text
    assert re.search(
        r"reserve_stock on orders-api (<span[^>]*>[^<]*</span> )?— by hand: released R-1", text
    )
    assert "Nothing: every step was undone." in text
    assert "Attempts, output and notes" in text and "succeeded" in text
    assert "{&quot;latency_ms&quot;: 0, &quot;simulated&quot;: true}" in text  # attempt output
    assert 'hx-trigger="every 1s"' not in text and "<form" in text
    assert "Skip step" not in text and "Abort rollback" not in text


def test_a_step_of_another_rollback_is_404(client, alice, rollback, make_run):
    other = engine.rollback_plan(run=make_run(), actor=alice, reason="other")
    step = _steps(other).first()
    url = reverse("step-action", kwargs={"pk": rollback.pk, "step_id": step.pk, "action": "skip"})
    response = _login(client, alice).post(url, {"reason": "x", "confirm": "on"})
    assert response.status_code == 404


def test_actions_only_accept_post(client, alice, rollback):
    assert _login(client, alice).get(_action(rollback, "start")).status_code == 405
    assert _state(rollback) == Rollback.State.APPROVED


# Live updates -------------------------------------------------------------------------------


def test_htmx_gets_only_the_status_fragment_which_polls_while_running(client, alice, rollback):
    _running(rollback, alice)
    response = _login(client, alice).get(reverse("rollback", args=[rollback.pk]), **HTMX)
    text = _text(response)
    assert response.status_code == 200
    assert "<html" not in text and "<h1" not in text
    assert text.lstrip().startswith('<section id="rollback-status"')
    assert 'hx-trigger="every 1s"' in text
    assert f'hx-get="{reverse("rollback", args=[rollback.pk])}?v=' in text
    assert "HX-Request" in response["Vary"]
    _assert_no_inline_script_or_style(text)


def test_polling_stops_once_the_rollback_succeeded(client, alice, rollback):
    _running(rollback, alice)
    manual = _steps(rollback).first()
    engine.step_resolve(step=manual, actor=alice, note="done")
    for step in _steps(rollback, is_manual=False):
        engine.step_run(step_id=step.pk)
    assert _state(rollback) == Rollback.State.SUCCEEDED
    text = _text(_login(client, alice).get(reverse("rollback", args=[rollback.pk]), **HTMX))
    assert 'id="rollback-status"' in text and "<html" not in text
    assert "hx-trigger" not in text and "hx-get" not in text
    assert "What was undone" in text


def test_polling_stops_once_the_rollback_is_aborted(client, alice, rollback):
    _running(rollback, alice)
    engine.rollback_abort(rollback=rollback, actor=alice, reason="stop")
    text = _text(_login(client, alice).get(reverse("rollback", args=[rollback.pk]), **HTMX))
    assert "hx-trigger" not in text and "aborted" in text


def test_a_poll_that_finds_nothing_new_swaps_nothing(client, alice, rollback):
    _running(rollback, alice)
    url = reverse("rollback", args=[rollback.pk])
    _login(client, alice)
    first = _text(client.get(url, **HTMX))
    version = re.search(r"\?v=([0-9a-f]+)", first).group(1)
    assert client.get(url, {"v": version}, **HTMX).status_code == 204
    step = _steps(rollback, is_manual=False).first()
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED, last_error="boom")
    changed = client.get(url, {"v": version}, **HTMX)
    assert changed.status_code == 200 and "boom" in _text(changed)
    # Without htmx the version is ignored: the whole page.
    assert "<html" in _text(client.get(url, {"v": version}))


def test_an_htmx_action_answers_with_the_fragment_and_a_notice(client, alice, rollback):
    response = _login(client, alice).post(_action(rollback, "start"), **HTMX)
    text = _text(response)
    assert response.status_code == 200
    assert _state(rollback) == Rollback.State.RUNNING
    assert text.lstrip().startswith('<section id="rollback-status"')
    assert 'id="action-result"' in text and 'hx-swap-oob="innerHTML"' in text
    assert f"Rollback #{rollback.pk} started." in text
    assert 'hx-trigger="every 1s"' in text and "<html" not in text
    # The notice is not left in the session for the next full page.
    assert "started." not in _text(client.get(reverse("rollback", args=[rollback.pk])))

    error = _text(client.post(_action(rollback, "resume"), **HTMX))
    assert 'class="message error"' in error and "cannot" in error


# Query counts and the page's hygiene --------------------------------------------------------


def _page_queries(client, rollback) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse("rollback", args=[rollback.pk]))
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("finished", [False, True])
def test_rollback_page_query_count_does_not_grow_with_steps(client, alice, make_run, finished):
    counts = []
    for orders in (3, 30):
        rollback = engine.rollback_plan(
            run=make_run(orders=orders, reservation=False), actor=alice, reason="n+1"
        )
        _running(rollback, alice)
        for step in _steps(rollback):
            engine.step_run(step_id=step.pk)
        assert Attempt.objects.filter(step__rollback=rollback).count() == orders
        if not finished:
            Step.objects.filter(rollback=rollback).update(state=Step.State.FAILED)
            Rollback.objects.filter(pk=rollback.pk).update(state=Rollback.State.RUNNING)
        _login(client, alice)
        counts.append(_page_queries(client, rollback))
    assert counts[0] == counts[1], counts
    assert counts[0] <= 16, counts


def test_list_pages_query_count_does_not_grow_with_rows(client, alice, make_run):
    counts = []
    for n in (2, 12):
        while Rollback.objects.count() < n:
            engine.rollback_plan(run=make_run(), actor=alice, reason="rows")
        _login(client, alice)
        with CaptureQueriesContext(connection) as ctx:
            client.get(reverse("runs"))
            client.get(reverse("rollbacks"))
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_no_page_has_inline_script_or_style(client, alice, rollback, run):
    _running(rollback, alice)
    step = _steps(rollback, is_manual=False).first()
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED, last_error="boom")
    _login(client, alice)
    responses = [
        client.get(reverse("runs")),
        client.get(reverse("rollbacks")),
        client.get(reverse("run", args=[run.pk])),
        client.post(reverse("run-plan", args=[run.pk]), {"reason": ""}),
        client.get(reverse("rollback", args=[rollback.pk])),
        client.get(reverse("rollback", args=[rollback.pk]), **HTMX),
        client.post(_action(rollback, "pause"), **HTMX),
    ]
    for response in responses:
        assert response.status_code in (200, 400)
        _assert_no_inline_script_or_style(_text(response))
    page = _text(responses[4])
    assert '<script src="/static/js/rollback-live.js" defer></script>' in page


def test_every_control_on_the_rollback_page_is_labelled(client, alice, rollback):
    _running(rollback, alice)
    text = _text(_login(client, alice).get(reverse("rollback", args=[rollback.pk])))
    fields = re.findall(r"<(?:textarea|input)\b[^>]*\bid=\"([^\"]+)\"", text)
    assert fields  # abort reason and confirmation, the manual step's note and skip
    for field_id in fields:
        assert f'<label for="{field_id}">' in text, field_id
    headings = [int(level) for level in re.findall(r"<h([1-6])\b", text)]
    assert headings[0] == 1
    assert all(b - a <= 1 for a, b in zip(headings, headings[1:], strict=False)), headings


def test_rollback_page_renders_http_and_sql_compensations(client, alice, make_system):
    api = make_system("billing-api")
    ledger_db = make_system("ledger-db", kind="database")
    services.contract_publish(
        system=api,
        actions={
            "charge": {
                "compensation": {
                    "kind": "http",
                    "method": "POST",
                    "url": "http://127.0.0.1:9/charges/{params.charge_id}/refund",
                    "body": {"reason": "{rollback.reason}"},
                }
            }
        },
        actor="test",
    )
    services.contract_publish(
        system=ledger_db,
        actions={
            "post_entry": {
                "compensation": {
                    "kind": "sql",
                    "database": "ledger",
                    "statement": "DELETE FROM entries WHERE id = %(entry_id)s",
                    "params": {"entry_id": "{params.entry_id}"},
                }
            }
        },
        actor="test",
    )
    run, _ = runs.run_register(process="billing", external_id="b-1", actor="test")
    for system, action, params in (
        ("billing-api", "charge", {"charge_id": "ch_42"}),
        ("ledger-db", "post_entry", {"entry_id": 7}),
    ):
        runs.action_report(
            run=run,
            system_slug=system,
            action_type=action,
            idempotency_key=f"{action}-1",
            params=params,
            actor="test",
        )
    rollback = engine.rollback_plan(run=run, actor=alice, reason="double charge")
    text = _text(_login(client, alice).get(reverse("rollback", args=[rollback.pk])))
    assert "POST http://127.0.0.1:9/charges/ch_42/refund" in text
    assert "{&quot;reason&quot;: &quot;double charge&quot;}" in text  # the body
    assert "DELETE FROM entries WHERE id = %(entry_id)s" in text
    assert "{&quot;entry_id&quot;: 7}" in text and "ledger" in text


def test_aborting_after_a_step_failed_ends_failed_and_says_so(client, alice, rollback):
    _running(rollback, alice)
    step = _steps(rollback, is_manual=False).first()
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED, last_error="boom")
    response = _login(client, alice).post(
        _action(rollback, "abort"), {"reason": "give up", "confirm": "on"}, follow=True
    )
    text = _text(response)
    assert _state(rollback) == Rollback.State.FAILED
    assert "it ends failed, because a step had failed" in text
    # The outcome names the step and the forward action's ids (the page changed: issue 15).
    assert re.search(
        rf"Step {step.pk}</a>: create_order on orders-db <span class=\"params\">\(order id \d+[^)]*\)"
        r"</span>: failed: waiting for a human — boom",
        text,
    ), text[text.index("Outcome") :][:2000]


def test_a_run_can_be_planned_again_once_its_rollback_ended(client, alice, rollback):
    engine.rollback_abort(rollback=rollback, actor=alice, reason="wrong reason")
    response = _login(client, alice).post(
        reverse("run-plan", args=[rollback.run.pk]), {"reason": "second attempt"}
    )
    assert response.status_code == 302
    assert Rollback.objects.filter(run=rollback.run).count() == 2
