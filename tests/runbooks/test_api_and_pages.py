"""The runbooks page, the instantiation form and ``POST /api/v1/runbooks/{slug}/instantiate``:
the same service and checks; errors per field; outsiders get 404, non-operators 403."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from ledger.models import Entry
from rollbacks.models import Rollback
from rollbacks.tokens import token_create
from runbooks.models import RunbookInstance, RunbookVersion

pytestmark = pytest.mark.django_db
URL = "/api/v1/runbooks/{}/instantiate"


def _post(client, user, slug, body):
    token = token_create(user=user, name="t")[1]
    return client.post(
        URL.format(slug),
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )


def test_api_instantiates_and_answers_the_plan(rb, client, alice):
    response = _post(
        client, alice, "checkout-off", {"params": {"invoice_id": "inv-9", "row": 7}, "reason": "r"}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    rollback = Rollback.objects.get(pk=body["id"])
    assert rollback.trigger == "runbook" and body["state"] == "approved"
    assert [len(stage["steps"]) for stage in body["stages"]] == [1, 1, 1]
    assert RunbookInstance.objects.get().values["row"] == 7


def test_api_names_each_bad_field_and_writes_nothing(rb, client, alice):
    response = _post(
        client, alice, "checkout-off", {"params": {"row": "seven", "mode": "burn"}, "reason": "r"}
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["params.row"] == ["must be a whole number, not 'seven'"]
    assert errors["params.mode"] == ["must be one of void, refund"]
    assert errors["params.invoice_id"] == ["is required"]
    assert not Rollback.objects.exists()
    response = _post(client, alice, "checkout-off", {"params": {}, "reason": "r", "x": 1})
    assert response.status_code == 400 and response.json()["errors"] == {"x": ["Unknown field."]}


@pytest.mark.parametrize(
    ("who", "slug", "status"),
    [
        ("bob", "checkout-off", 403),
        ("carol", "checkout-off", 403),
        ("mallory", "checkout-off", 404),
        ("alice", "reindex", 404),
        ("alice", "no-such-runbook", 404),
    ],
)
def test_api_refuses_who_may_not_use_the_runbook(rb, client, request, who, slug, status):
    user = request.getfixturevalue(who)
    body = {"params": {"invoice_id": "i", "row": 1}, "reason": "r"}
    assert _post(client, user, slug, body).status_code == status
    assert not Rollback.objects.exists()


def test_api_is_in_the_openapi_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert "post" in schema["paths"]["/api/v1/runbooks/{slug}/instantiate"]


# Pages ---------------------------------------------------------------------------------------


def test_the_list_shows_an_operator_their_runbooks(rb, client, alice):
    client.force_login(alice)
    page = client.get(reverse("runbooks")).content.decode()
    assert "Checkout off" in page and "Feature flag misfire" in page
    assert "Reindex search" not in page  # platform's: alice cannot see search


def test_the_list_is_empty_for_an_outsider(rb, client, mallory):
    client.force_login(mallory)
    page = client.get(reverse("runbooks")).content.decode()
    assert "No runbook you can see yet" in page and "Checkout off" not in page


def test_the_form_has_a_labelled_field_per_parameter_with_defaults(rb, client, alice):
    client.force_login(alice)
    page = client.get(reverse("runbook", args=["checkout-off"])).content.decode()
    assert '<label for="id_param_flag">Feature flag</label>' in page
    assert 'value="new-checkout"' in page
    assert '<option value="void" selected>void</option>' in page
    assert "e.g. inv-1" in page  # the help text
    assert "Plan rollback from runbook" in page


def test_an_approver_sees_the_runbook_without_the_form(rb, client, bob):
    client.force_login(bob)
    page = client.get(reverse("runbook", args=["checkout-off"])).content.decode()
    assert "Checkout off" in page and "Plan rollback from runbook" not in page


def test_the_form_shows_errors_next_to_each_field_and_writes_nothing(rb, client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("runbook-instantiate", args=["checkout-off"]),
        {"param_flag": "new-checkout", "param_row": "x", "param_mode": "void", "reason": ""},
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert form.errors["param_row"] == ["Enter a whole number."]
    assert form.errors["param_invoice_id"] == ["Invoice id is required."]
    assert form.errors["reason"] == ["Say why this runbook is being used."]
    assert not Rollback.objects.exists()


def test_a_service_error_lands_next_to_its_field(rb, client, alice):
    from rollbacks import services as estate

    estate.contract_publish(
        system=rb.systems["flags"],
        actions={"other": {"compensation": {"kind": "simulated"}}},
        actor="test",
    )
    client.force_login(alice)
    response = client.post(
        reverse("runbook-instantiate", args=["checkout-off"]),
        {"param_invoice_id": "i", "param_row": "1", "param_mode": "void", "reason": "r"},
    )
    assert response.status_code == 400
    assert "steps[0].action_type: the contract of flags has no action" in str(
        response.context["form"].non_field_errors()
    )


def test_the_form_instantiates_and_redirects_to_the_rollback(rb, client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("runbook-instantiate", args=["checkout-off"]),
        {
            "param_flag": "",  # left empty: the default applies
            "param_invoice_id": "inv-3",
            "param_row": "3",
            "param_mode": "refund",
            "reason": "checkout broke",
            "is_drill": "on",
        },
    )
    rollback = Rollback.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/rollbacks/{rollback.pk}/"
    assert rollback.is_drill
    assert RunbookInstance.objects.get().values == {
        "flag": "new-checkout",
        "invoice_id": "inv-3",
        "row": 3,
        "mode": "refund",
    }
    page = client.get(response["Location"]).content.decode()
    assert 'id="rollback-runbook"' in page and "checkout-off v1" in page


@pytest.mark.parametrize(("who", "status"), [("bob", 403), ("carol", 403), ("mallory", 404)])
def test_the_form_refuses_who_may_not_use_it(rb, client, request, who, status):
    client.force_login(request.getfixturevalue(who))
    response = client.post(
        reverse("runbook-instantiate", args=["checkout-off"]),
        {"param_invoice_id": "i", "param_row": "1", "param_mode": "void", "reason": "r"},
    )
    assert response.status_code == status and not Rollback.objects.exists()


# Admin ---------------------------------------------------------------------------------------


def test_admin_publishes_a_version_prefilled_from_the_newest_and_ledgers_it(rb, client, dave):
    client.force_login(dave)
    add = reverse("admin:runbooks_runbookversion_add")
    page = client.get(add + f"?runbook={rb.own.pk}").content.decode()
    assert "{params.invoice_id}" in page  # pre-filled from v1
    assert 'name="based_on" value="1"' in page
    steps = rb.own_v1.steps[:1]
    post = {
        "runbook": rb.own.pk,
        "note": "flag only",
        "parameters": json.dumps(rb.own_v1.parameters),
        "steps": json.dumps(steps),
    }
    stale = client.post(add, post | {"based_on": "0"})  # opened before v1 was published
    assert stale.status_code == 200
    assert "version 1 was published by" in stale.content.decode()
    assert not RunbookVersion.objects.filter(runbook=rb.own, version=2).exists()
    response = client.post(add, post | {"based_on": "1"})
    assert response.status_code == 302
    v2 = RunbookVersion.objects.get(runbook=rb.own, version=2)
    assert v2.steps == steps and v2.published_by == dave
    assert Entry.objects.filter(action="runbook.version.published", subject_id=str(v2.pk)).exists()
    # Published versions are read-only and never deleted.
    change = reverse("admin:runbooks_runbookversion_change", args=[v2.pk])
    assert client.post(change, {"note": "edited"}).status_code == 403
    v2.refresh_from_db()
    assert v2.note == "flag only"


def test_admin_refuses_a_bad_version_naming_the_field(rb, client, dave):
    client.force_login(dave)
    response = client.post(
        reverse("admin:runbooks_runbookversion_add"),
        {
            "runbook": rb.own.pk,
            "parameters": "[]",
            "steps": json.dumps([{"system": "nowhere", "action_type": "x", "params": {}}]),
            "based_on": "1",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["steps"] == [
        "steps[0].system: unknown system 'nowhere'"
    ]
    assert RunbookVersion.objects.filter(runbook=rb.own).count() == 1


def test_admin_changes_to_a_runbook_are_ledgered(rb, client, dave):
    client.force_login(dave)
    response = client.post(
        reverse("admin:runbooks_runbook_change", args=[rb.own.pk]),
        {
            "slug": "checkout-off",
            "name": "Checkout off (v2 wording)",
            "description": "",
            "incident_type": rb.own.incident_type_id,
            "versions-TOTAL_FORMS": "1",
            "versions-INITIAL_FORMS": "1",
            "versions-MIN_NUM_FORMS": "0",
            "versions-MAX_NUM_FORMS": "1000",
            "versions-0-id": rb.own_v1.pk,
            "versions-0-runbook": rb.own.pk,
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = Entry.objects.get(action="runbook.changed")
    assert entry.payload["changed"] == ["name"]
    assert entry.payload["values"] == {"name": "Checkout off (v2 wording)"}


def test_a_value_outside_its_constraint_is_refused_and_nothing_is_planned(rb, client, alice):
    """An order id of -5 was instantiated and pre-approved at once (issue 16, finding 14)."""
    from runbooks import services
    from tests.runbooks.conftest import PARAMETERS, STEPS

    parameters = [p | {"minimum": 1} if p["name"] == "row" else p for p in PARAMETERS]
    services.runbook_version_publish(
        runbook=rb.own, parameters=parameters, steps=STEPS, actor="test"
    )
    response = _post(
        client, alice, "checkout-off", {"params": {"invoice_id": "inv-9", "row": -5}, "reason": "r"}
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"params.row": ["must be at least 1"]}
    long_reason = {"params": {"invoice_id": "inv-9", "row": 5}, "reason": "x" * 100_000}
    response = _post(client, alice, "checkout-off", long_reason)
    assert response.status_code == 400 and "2000" in response.json()["errors"]["reason"][0]
    assert not Rollback.objects.exists() and not RunbookInstance.objects.exists()
    assert not Entry.objects.filter(action="rollback.planned").exists()
