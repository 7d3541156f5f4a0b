"""``Idempotency-Key`` on POST /api/v1/events: a retried POST returns the event stored the
first time; the same key with other fields is a 409 naming the key (docs/timeline.md)."""

from __future__ import annotations

import json

import pytest

from rollbacks.tokens import token_create
from tests.rollbacks.test_concurrency import at_once
from timeline.events import event_record
from timeline.models import Event

pytestmark = pytest.mark.django_db
DEPLOY = {"kind": "deploy", "source": "ci", "title": "orders-api 2.4.1 deployed"}


@pytest.fixture
def token(make_system, alice):
    make_system("orders-api")
    return token_create(user=alice, name="ci")[1]


def _post(client, token, body, key=None):
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(
        "/api/v1/events", json.dumps(body), content_type="application/json", headers=headers
    )


def test_a_retry_with_the_same_key_returns_the_first_event(client, token):
    first = _post(client, token, DEPLOY | {"system": "orders-api"}, '"deploy-2.4.1"')
    assert first.status_code == 201
    again = _post(client, token, DEPLOY | {"system": "orders-api"}, '"deploy-2.4.1"')
    assert again.status_code == 200 and again.json() == first.json()
    unquoted = _post(client, token, DEPLOY | {"system": "orders-api"}, "deploy-2.4.1")
    assert unquoted.status_code == 200 and unquoted.json()["id"] == first.json()["id"]
    assert Event.objects.count() == 1
    assert Event.objects.get().idempotency_key == "deploy-2.4.1"


def test_the_same_key_with_other_fields_is_a_conflict_naming_the_key(client, token):
    first = _post(client, token, DEPLOY, '"k-1"')
    clash = _post(client, token, DEPLOY | {"title": "orders-api 2.4.2 deployed"}, '"k-1"')
    assert clash.status_code == 409
    message = f"Idempotency-Key 'k-1' was already used for event #{first.json()['id']}"
    assert clash.json()["errors"]["Idempotency-Key"][0].startswith(message)
    assert Event.objects.count() == 1


def test_without_a_key_each_post_stores_an_event_and_keys_are_per_account(client, token, dave):
    assert _post(client, token, DEPLOY).status_code == 201
    assert _post(client, token, DEPLOY).status_code == 201
    other = token_create(user=dave, name="ci")[1]
    assert _post(client, token, DEPLOY, '"same"').status_code == 201
    assert _post(client, other, DEPLOY, '"same"').status_code == 201  # dave's own key
    assert Event.objects.count() == 4


@pytest.mark.parametrize(
    "key", ['""', '"unterminated', '"a"b"', '"tab\there"', "x" * 201, '"caf\u00e9"', '"a\\n"']
)
def test_a_key_that_is_not_a_key_is_refused_naming_the_header(client, token, key):
    answer = _post(client, token, DEPLOY, key)
    assert answer.status_code == 400
    assert list(answer.json()["errors"]) == ["Idempotency-Key"]
    assert Event.objects.count() == 0


def test_escaped_quotes_are_part_of_the_key(client, token):
    assert _post(client, token, DEPLOY, r'"say \"hi\""').status_code == 201
    assert Event.objects.get().idempotency_key == 'say "hi"'
    assert _post(client, token, DEPLOY, r'"say \"hi\""').status_code == 200


def test_the_schema_documents_the_header_and_the_answers(client):
    operation = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/events"]["post"]
    assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == [
        "Idempotency-Key"
    ]
    assert {"200", "201", "409"} <= set(operation["responses"])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_retries_store_one_event(make_system, alice):
    make_system("orders-api")
    errors = at_once(lambda i: event_record(actor=alice, idempotency_key="race", **DEPLOY))
    assert errors == []
    assert Event.objects.filter(idempotency_key="race").count() == 1
