"""Operator actions and the estate document through the API, with the buttons' checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from django.contrib.auth.models import Group

from ledger.models import Entry
from rollbacks import engine
from rollbacks.models import Contract, DependencyMap, Rollback, Step, System
from rollbacks.tokens import token_create
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
DEMO = Path(__file__).resolve().parents[2] / "demo" / "estate.yaml"


def _account(django_user_model, name, *groups):
    user = django_user_model.objects.create_user(name)
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return token_create(user=user, name=name)[1]


def _post(client, url, token, body=None):
    return client.post(
        url,
        json.dumps(body or {}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def planned(make_system, target_server, alice):
    engine_estate.build(make_system, target_server[0])
    return engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")


def test_operator_token_starts_pauses_resumes_and_aborts(client, planned, django_user_model):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    base = f"/api/v1/rollbacks/{planned.pk}"
    assert _post(client, f"{base}/start", token).json()["state"] == "running"
    assert _post(client, f"{base}/pause", token).json()["state"] == "paused"
    again = _post(client, f"{base}/pause", token)
    assert again.status_code == 400 and "is paused: cannot pause" in again.json()["detail"]
    assert "state" in again.json()["errors"]
    assert _post(client, f"{base}/resume", token).json()["state"] == "running"
    no_reason = _post(client, f"{base}/abort", token)
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["errors"]
    assert (
        _post(client, f"{base}/abort", token, {"reason": "wrong run"}).json()["state"] == "aborted"
    )


def test_step_actions_through_the_api(client, planned, django_user_model):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    _post(client, f"/api/v1/rollbacks/{planned.pk}/start", token)
    step = planned.steps.get(system__slug="flags")
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED)
    url = f"/api/v1/rollbacks/{planned.pk}/steps/{step.pk}"
    assert _post(client, f"{url}/skip", token).status_code == 400  # no reason
    body = _post(client, f"{url}/retry", token).json()
    assert [s for st in body["stages"] for s in st["steps"] if s["id"] == step.pk][0][
        "state"
    ] == "pending"
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED)
    assert _post(client, f"{url}/skip", token, {"reason": "done by hand"}).status_code == 200
    assert Step.objects.get(pk=step.pk).state == Step.State.SKIPPED
    assert (
        _post(client, f"/api/v1/rollbacks/{planned.pk}/steps/999999/retry", token).status_code
        == 404
    )


def test_auditor_and_other_team_tokens_cannot_act(client, planned, django_user_model):
    auditor = _account(django_user_model, "audit-bot", "auditor")
    other = _account(django_user_model, "platform-bot", "operator", "team:platform")
    assert _post(client, f"/api/v1/rollbacks/{planned.pk}/start", auditor).status_code == 403
    assert _post(client, f"/api/v1/rollbacks/{planned.pk}/start", other).status_code == 404
    assert Rollback.objects.get(pk=planned.pk).state == Rollback.State.APPROVED
    assert Entry.objects.filter(action="rollback.start", outcome="refused").count() == 1


def test_estate_round_trip_through_the_api(client, django_user_model):
    token = _account(django_user_model, "estate-bot", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    doc = yaml.safe_load(DEMO.read_text())
    dry = client.put(
        "/api/v1/estate?dry_run=1",
        json.dumps(doc),
        content_type="application/json",
        headers=headers,
    )
    assert dry.status_code == 200 and dry.json()["applied"] is False and dry.json()["changes"]
    assert System.objects.count() == 0
    done = client.put(
        "/api/v1/estate", DEMO.read_text(), content_type="application/yaml", headers=headers
    )
    assert done.status_code == 200 and done.json()["applied"] is True
    exported = client.get("/api/v1/estate", headers=headers).json()
    again = client.put(
        "/api/v1/estate", json.dumps(exported), content_type="application/json", headers=headers
    )
    assert again.json() == {"applied": False, "sha256": again.json()["sha256"], "changes": []}
    assert Entry.objects.filter(action="estate.imported").count() == 1


def test_bad_estate_document_is_refused_with_paths_and_changes_nothing(client, django_user_model):
    token = _account(django_user_model, "estate-bot", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    doc = yaml.safe_load(DEMO.read_text())
    doc["dependencies"].append({"unwind": "orders-db", "before": "flags"})  # closes a cycle
    doc["contracts"][0]["actions"]["enable_flag"]["backoff"]["max_s"] = 0.1
    response = client.put(
        "/api/v1/estate", json.dumps(doc), content_type="application/json", headers=headers
    )
    assert response.status_code == 400
    paths = {p["path"]: p["message"] for p in response.json()["paths"]}
    assert "orders-api → orders-db → flags" in paths["dependencies"]
    assert "contracts[0].actions.enable_flag.backoff.max_s" in paths
    assert System.objects.count() == DependencyMap.objects.count() == Contract.objects.count() == 0


def test_only_admins_read_or_replace_the_estate(client, django_user_model):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/estate", headers=headers).status_code == 403
    assert (
        client.put(
            "/api/v1/estate", "{}", content_type="application/json", headers=headers
        ).status_code
        == 403
    )


def test_a_manual_step_is_resolved_with_the_note_the_error_asks_for(
    client, planned, django_user_model
):
    """The refusal says ``note: say what was done``; sending ``note`` resolves it (issue 16:
    it used to answer "Unknown field", and only ``reason`` worked)."""
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    step = planned.steps.get(system__slug="payment-gateway")
    Step.objects.filter(pk=step.pk).update(state=Step.State.WAITING_HUMAN)
    url = f"/api/v1/rollbacks/{planned.pk}/steps/{step.pk}/resolve"
    missing = _post(client, url, token)
    assert missing.status_code == 400 and "note" in missing.json()["errors"]
    done = _post(client, url, token, {"note": "refunded in the provider's console"})
    assert done.status_code == 200, done.content
    step.refresh_from_db()
    assert step.state == Step.State.SUCCEEDED
    assert step.human_note == "refunded in the provider's console"


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("abort", {"reason": "x" * 100_000}, "reason"),
        ("approve", {"comment": "x" * 2001}, "comment"),
        ("approve", {"comment": "ok", "attestations": {"pii": "x" * 2001}}, "attestations.pii"),
    ],
)
def test_an_action_reason_over_2000_characters_is_refused(
    client, planned, django_user_model, action, body, field
):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    entries = Entry.objects.count()
    response = _post(client, f"/api/v1/rollbacks/{planned.pk}/{action}", token, body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"] and "2000" in response.json()["detail"]
    assert Rollback.objects.get(pk=planned.pk).state == Rollback.State.APPROVED
    assert Entry.objects.count() == entries


def test_step_actions_by_the_step_id_alone(client, planned, django_user_model):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    outsider = _account(django_user_model, "other-bot", "operator", "team:platform")
    _post(client, f"/api/v1/rollbacks/{planned.pk}/start", token)
    step = planned.steps.get(system__slug="flags")
    Step.objects.filter(pk=step.pk).update(state=Step.State.FAILED)
    hidden = _post(client, f"/api/v1/steps/{step.pk}/retry", outsider)
    assert hidden.status_code == 404 and hidden.json()["detail"] == "No such step."
    assert _post(client, "/api/v1/steps/999999/retry", token).status_code == 404
    assert "reason" in _post(client, f"/api/v1/steps/{step.pk}/skip", token).json()["errors"]
    body = _post(client, f"/api/v1/steps/{step.pk}/skip", token, {"reason": "done by hand"})
    assert body.status_code == 200 and body.json()["id"] == planned.pk
    assert Step.objects.get(pk=step.pk).state == Step.State.SKIPPED


def test_run_list_shows_visible_runs_with_their_newest_rollback(
    client, planned, django_user_model, django_assert_max_num_queries
):
    token = _account(django_user_model, "ops-bot", "operator", "team:payments")
    outsider = _account(django_user_model, "other-bot", "operator", "team:platform")
    headers = {"Authorization": f"Bearer {token}"}
    with django_assert_max_num_queries(8):
        runs = client.get("/api/v1/runs", headers=headers).json()
    assert [(r["id"], r["rollback"]["id"], r["rollback"]["state"]) for r in runs] == [
        (planned.run_id, planned.pk, planned.state)
    ]
    assert runs[0]["actions_reported"] == planned.run.actions.count()
    assert client.get("/api/v1/runs?status=running", headers=headers).json() == []
    bad = client.get("/api/v1/runs?status=lost", headers=headers)
    assert bad.status_code == 400 and "status" in bad.json()["errors"]
    assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {outsider}"}).json() == []
