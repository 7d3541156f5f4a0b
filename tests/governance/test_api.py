"""Approve and reject through the JSON API: the same checks as the buttons, four-eyes for
service accounts included, and documented in the OpenAPI schema."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group

from governance.models import Approval, ApprovalPolicy
from ledger.models import Entry
from rollbacks.models import Rollback
from tests.conftest import service_token
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
R = Rollback.State
PII = {"key": "pii", "label": "Personal data impact checked"}


def _post(client, url, token, body=None):
    return client.post(
        url,
        json.dumps(body if body is not None else {}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def pipeline(django_user_model, teams):
    """A service account that reports runs, requests rollbacks, and also holds the approver role."""
    return service_token(
        django_user_model, "orders-pipeline", "operator", "approver", "team:payments"
    )


@pytest.fixture
def approver_bot(django_user_model, teams):
    return service_token(django_user_model, "change-bot", "approver", "team:payments")


@pytest.fixture
def requested(client, make_system, target_server, pipeline):
    """A rollback the pipeline requested through the API, awaiting one approval."""
    engine_estate.build(make_system, target_server[0])
    policy = ApprovalPolicy.objects.create(
        name="critical", tiers=[1], approvals_required=1, attestations=[PII]
    )
    policy.eligible_groups.set([Group.objects.get(name="approver")])
    run = engine_estate.failed_run()
    response = _post(client, "/api/v1/rollbacks", pipeline, {"run": run.pk, "reason": "undo"})
    assert response.status_code == 201 and response.json()["state"] == "awaiting_approval"
    return Rollback.objects.get(pk=response.json()["id"])


def test_the_requesting_service_account_cannot_approve_its_own_rollback(
    client, pipeline, requested
):
    response = _post(
        client,
        f"/api/v1/rollbacks/{requested.pk}/approve",
        pipeline,
        {"comment": "mine", "attestations": {"pii": "none"}},
    )
    assert response.status_code == 403
    assert "four-eyes" in response.json()["detail"]
    assert Approval.objects.count() == 0
    assert Rollback.objects.get(pk=requested.pk).state == R.AWAITING_APPROVAL
    refused = Entry.objects.get(action="approval.give", outcome="refused")
    assert refused.actor_user.username == "orders-pipeline"


def test_a_second_account_approves_and_the_rollback_is_approved(client, approver_bot, requested):
    url = f"/api/v1/rollbacks/{requested.pk}/approve"
    no_attestation = _post(client, url, approver_bot, {"comment": "checked"})
    assert no_attestation.status_code == 400
    assert "Personal data impact checked" in no_attestation.json()["errors"]["attestations"][0]
    no_comment = _post(client, url, approver_bot, {"attestations": {"pii": "none"}})
    assert no_comment.status_code == 400 and "comment" in no_comment.json()["errors"]
    assert Approval.objects.count() == 0
    response = _post(
        client, url, approver_bot, {"comment": "checked", "attestations": {"pii": "no PII"}}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "approved" and body["awaits_approval"] is False
    approval = Approval.objects.get()
    assert approval.approver.username == "change-bot" and approval.attestations == {"pii": "no PII"}
    again = _post(client, url, approver_bot, {"comment": "again", "attestations": {"pii": "x"}})
    assert again.status_code == 400 and "state" in again.json()["errors"]


def test_reject_through_the_api_aborts(client, approver_bot, requested):
    url = f"/api/v1/rollbacks/{requested.pk}/reject"
    assert _post(client, url, approver_bot, {}).status_code == 400
    response = _post(client, url, approver_bot, {"comment": "wrong run"})
    assert response.status_code == 200 and response.json()["state"] == "aborted"
    assert Approval.objects.get().decision == Approval.Decision.REJECT


def test_auditors_operators_and_outsiders_cannot_approve(client, django_user_model, requested):
    auditor = service_token(django_user_model, "audit-bot", "auditor")
    operator = service_token(django_user_model, "ops-bot", "operator", "team:payments")
    outsider = service_token(django_user_model, "platform-bot", "approver", "team:platform")
    body = {"comment": "ok", "attestations": {"pii": "none"}}
    url = f"/api/v1/rollbacks/{requested.pk}/approve"
    assert _post(client, url, auditor, body).status_code == 403
    assert _post(client, url, operator, body).status_code == 403
    assert _post(client, url, outsider, body).status_code == 404
    assert (
        _post(client, f"/api/v1/rollbacks/{requested.pk}/reject", auditor, body).status_code == 403
    )
    assert Approval.objects.count() == 0
    assert Rollback.objects.get(pk=requested.pk).state == R.AWAITING_APPROVAL


def test_unknown_fields_and_bad_attestations_are_refused(client, approver_bot, requested):
    url = f"/api/v1/rollbacks/{requested.pk}/approve"
    unknown = _post(client, url, approver_bot, {"comment": "ok", "approve": True})
    assert unknown.status_code == 400 and unknown.json()["errors"] == {
        "approve": ["Unknown field."]
    }
    not_text = _post(client, url, approver_bot, {"comment": "ok", "attestations": {"pii": 1}})
    assert not_text.status_code == 400 and "attestations.pii" in not_text.json()["errors"]
    assert Approval.objects.count() == 0


def test_openapi_documents_approve_and_reject(client):
    schema = client.get("/api/v1/openapi.json").json()
    [operation] = [
        op["post"]
        for path, op in schema["paths"].items()
        if path == "/api/v1/rollbacks/{id}/{action}"
    ]
    assert "approve" in operation["summary"] and "four-eyes" in operation["description"]
    action = next(p for p in operation["parameters"] if p["name"] == "action")
    assert {"approve", "reject"} <= set(action["schema"]["enum"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert "comment" in fields and "attestations" in fields
    assert "attestation" in fields["attestations"]["description"]
