"""/metrics: who may scrape it, and what the database's state reads as (metrics/)."""

from __future__ import annotations

import re

import pytest
from django.db import transaction

from ledger.verification import verification_run
from metrics import events
from rollbacks import engine
from rollbacks.models import Step
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db


def _value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of a scrape (labels in any order), or None."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return None


def test_loopback_may_scrape_and_others_need_the_token(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    far = {"REMOTE_ADDR": "203.0.113.5"}
    assert client.get("/metrics", **far).status_code == 403
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"}, **far)
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}, **far)
    assert right.status_code == 200
    settings.METRICS_ALLOW = ["203.0.113.0/24"]
    assert client.get("/metrics", **far).status_code == 200
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_the_state_of_rollbacks_steps_and_the_ledger_without_ids(
    client, make_system, target_server, alice
):
    engine_estate.build(make_system, target_server[0])
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    manual = rollback.steps.get(system__slug="payment-gateway")
    rollback.stages.filter(pk=manual.stage_id).update(state="halted")
    Step.objects.filter(pk=manual.pk).update(state=Step.State.WAITING_HUMAN)
    verification_run(actor="test")

    text = client.get("/metrics").content.decode()
    assert _value(text, "unwind_rollbacks", state="running", trigger="manual", drill="false") == 1
    assert _value(text, "unwind_steps_waiting_for_human", system="payment-gateway") == 1
    assert _value(text, "unwind_step_waiting_for_human_seconds", system="payment-gateway") >= 0
    assert _value(text, "unwind_stages_halted") == 1
    assert _value(text, "unwind_ledger_verification_ok") == 1
    assert _value(text, "unwind_outbox_backlog") is not None
    assert _value(text, "unwind_worker_inflight_steps") == 0
    assert _value(text, "unwind_time_to_approval_seconds_count") == 0
    # Bounded labels: no id of a rollback, step or run anywhere in a label.
    labels = {name for name in re.findall(r'[{,](\w+)="', text)}
    assert labels <= {"state", "trigger", "drill", "system", "outcome", "kind", "le"}, labels


def test_an_attempt_counts_once_its_record_commits(
    make_system, target_server, alice, client, django_capture_on_commit_callbacks
):
    engine_estate.build(make_system, target_server[0])
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    step = rollback.steps.select_related("system").get(system__slug="flags")
    attempt = type("A", (), {"started_at": rollback.created_at, "finished_at": None})()

    def scrape():
        text = client.get("/metrics").content.decode()
        return _value(text, "unwind_step_attempts_total", outcome="succeeded", system="flags") or 0

    before = scrape()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        events.attempt_recorded(step, attempt, "succeeded")
        raise RuntimeError("rolled back")
    assert callbacks == [] and scrape() == before
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        events.attempt_recorded(step, attempt, "succeeded")
    assert scrape() == before + 1


def test_sweeper_recoveries_and_the_periodic_verification(client):
    from ledger.models import Verification
    from ledger.tasks import verify

    def scrape(kind):
        text = client.get("/metrics").content.decode()
        return _value(text, "unwind_sweeper_recoveries_total", kind=kind) or 0

    before = scrape("expired")
    events.sweep_counted({"expired": 2, "redispatched": 0, "published": 0})
    assert scrape("expired") == before + 2
    verify()
    assert Verification.objects.latest().actor == "beat"
    text = client.get("/metrics").content.decode()
    assert _value(text, "unwind_ledger_verification_ok") == 1
