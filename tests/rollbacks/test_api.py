"""The JSON API (v1) as a service account uses it: report a run, its actions and failure,
request a rollback, read it back; bad input names the field and writes nothing."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.http import HttpResponse
from django.test import override_settings

from ledger.models import Entry
from rollbacks import engine, services
from rollbacks.models import DependencyEdge, ForwardAction, ProcessRun, Rollback, Step
from rollbacks.tokens import token_create, token_revoke

pytestmark = pytest.mark.django_db
BEFORE = DependencyEdge.Kind.BEFORE
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def estate(make_system):
    """flags (stage 1) → orders-api (stage 2) → orders-db (stage 3), all payments', plus
    platform's cache. Simulated and HTTP compensations, published contracts and map."""
    systems = {
        "flags": make_system("flags", kind="feature_flag", tier=3),
        "orders-api": make_system("orders-api"),
        "orders-db": make_system("orders-db", kind="database", tier=1),
        "cache": make_system("cache", team="platform", kind="cache"),
    }
    services.dependency_map_publish(
        edges=[(BEFORE, "flags", "orders-api"), (BEFORE, "orders-api", "orders-db")],
        actor="test",
    )
    simulated = {"compensation": {"kind": "simulated"}, "attempts": 2}
    services.contract_publish(
        system=systems["flags"], actor="test", actions={"enable_flag": simulated}
    )
    services.contract_publish(
        system=systems["orders-api"],
        actor="test",
        actions={
            "create_order": {
                "compensation": {
                    "kind": "http",
                    "method": "POST",
                    "url": "http://127.0.0.1:9/orders/{params.order_id}/cancel",
                    "body": {"reason": "{rollback.reason}"},
                }
            }
        },
    )
    services.contract_publish(
        system=systems["orders-db"], actor="test", actions={"insert_order": simulated}
    )
    return systems


def _account(django_user_model, username: str, *groups: str):
    user = django_user_model.objects.create_user(username=username)
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return user


@pytest.fixture
def payments_bot(django_user_model, teams):
    return _account(django_user_model, "payments-bot", "operator", "team:payments")


@pytest.fixture
def platform_bot(django_user_model, teams):
    return _account(django_user_model, "platform-bot", "operator", "team:platform")


@pytest.fixture
def token(payments_bot):
    return token_create(user=payments_bot, name="orders pipeline")[1]


@pytest.fixture
def platform_token(platform_bot):
    return token_create(user=platform_bot, name="platform pipeline")[1]


def post(client, url: str, body, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data, content_type="application/json", headers=headers)


def get(client, url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(url, headers=headers)


def _register(client, token, external_id="42") -> int:
    response = post(
        client,
        "/api/v1/runs",
        {"process": "orders-migration", "external_id": external_id, "trace_id": TRACE},
        token,
    )
    assert response.status_code in (200, 201), response.content
    return response.json()["id"]


ACTIONS = [
    {"system": "orders-db", "action_type": "insert_order", "idempotency_key": "k-db",
     "params": {"order_id": "o-1"}, "after": {"id": "o-1"}},
    {"system": "orders-api", "action_type": "create_order", "idempotency_key": "k-api",
     "params": {"order_id": "o-1"}, "before": {"status": "none"}},
    {"system": "flags", "action_type": "enable_flag", "idempotency_key": "k-flag",
     "params": {"feature": "new-checkout"}},
]  # fmt: skip


def _report_all(client, token, run_id, *, fail: bool = True) -> None:
    """Report every action and (unless ``fail`` is false) the failure: a rollback is asked
    for a run that reported its failure (issue 16, finding 11)."""
    for action in ACTIONS:
        response = post(client, f"/api/v1/runs/{run_id}/actions", action, token)
        assert response.status_code == 201, response.content
    if fail:
        response = post(client, f"/api/v1/runs/{run_id}/failure", {"reason": "it broke"}, token)
        assert response.status_code == 200, response.content


def _counts() -> dict[str, int]:
    return {
        "runs": ProcessRun.objects.count(),
        "actions": ForwardAction.objects.count(),
        "rollbacks": Rollback.objects.count(),
        "ledger": Entry.objects.count(),
    }


# --------------------------------------------------------------------------- the happy path


def test_register_report_fail_request_and_read_a_rollback(client, estate, token, payments_bot):
    response = post(
        client,
        "/api/v1/runs",
        {"process": "orders-migration", "external_id": "42", "trace_id": TRACE},
        token,
    )
    assert response.status_code == 201
    run = response.json()
    assert run["status"] == "running" and run["trace_id"] == TRACE and run["id"] > 0

    _report_all(client, token, run["id"], fail=False)
    response = post(
        client, f"/api/v1/runs/{run['id']}/failure", {"reason": "provider timed out"}, token
    )
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["failure_reason"] == "provider timed out"
    assert response.json()["actions_reported"] == 3

    response = post(
        client, "/api/v1/rollbacks", {"run": run["id"], "reason": "undo the migration"}, token
    )
    assert response.status_code == 201, response.content
    plan = response.json()
    assert plan["state"] == "approved" and plan["awaits_approval"] is False
    assert plan["dependency_map"] == 1 and plan["is_drill"] is False
    assert plan["requested_by"] == "payments-bot" and plan["run"] == run["id"]
    assert [(s["index"], [st["system"] for st in s["steps"]]) for s in plan["stages"]] == [
        (1, ["flags"]),
        (2, ["orders-api"]),
        (3, ["orders-db"]),
    ]
    api_step = plan["stages"][1]["steps"][0]
    assert api_step["action_type"] == "create_order" and api_step["kind"] == "http"
    assert api_step["spec"]["url"] == "http://127.0.0.1:9/orders/o-1/cancel"
    assert api_step["spec"]["body"] == {"reason": "undo the migration"}
    assert api_step["state"] == "pending" and api_step["is_manual"] is False
    assert api_step["idempotency_key"].startswith("unwind-undo-")
    assert set(api_step) >= {"id", "manual_reason", "spec", "idempotency_key"}

    # Run the first stage as the worker would: its attempt shows up in the status.
    rollback = Rollback.objects.get(pk=plan["id"])
    engine.rollback_start(rollback=rollback, actor=payments_bot)
    flags_step = plan["stages"][0]["steps"][0]["id"]
    assert engine.step_run(step_id=flags_step, worker="test") == "succeeded"

    response = get(client, f"/api/v1/rollbacks/{plan['id']}", token)
    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "running" and status["started_at"] is not None
    assert status["outcome_summary"] == "" and status["finished_at"] is None
    first, second = status["stages"][0], status["stages"][1]
    assert first["state"] == "succeeded" and second["state"] == "running"
    step = first["steps"][0]
    assert step["state"] == "succeeded" and step["attempt_count"] == 1
    [attempt] = step["attempts"]
    assert attempt["number"] == 1 and attempt["outcome"] == "succeeded"
    assert attempt["error"] == "" and attempt["output"]["simulated"] is True
    assert attempt["started_at"] and attempt["finished_at"]
    assert second["steps"][0]["attempts"] == []


def test_rollback_that_needs_approval_says_so(client, estate, token):
    from governance.models import ApprovalPolicy

    ApprovalPolicy.objects.create(name="everything", approvals_required=2)
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    response = post(
        client, "/api/v1/rollbacks", {"run": run_id, "reason": "undo", "drill": True}, token
    )
    assert response.status_code == 201
    assert response.json()["state"] == "awaiting_approval"
    assert response.json()["awaits_approval"] is True and response.json()["is_drill"] is True


def test_status_of_a_rollback_takes_a_constant_number_of_queries(
    client, estate, token, django_assert_max_num_queries
):
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    rollback_id = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).json()[
        "id"
    ]
    with django_assert_max_num_queries(12):
        assert get(client, f"/api/v1/rollbacks/{rollback_id}", token).status_code == 200


# --------------------------------------------------------------------------- idempotency


def test_the_same_run_registered_twice_is_one_row_and_the_same_body(client, token):
    first = post(client, "/api/v1/runs", {"process": "p", "external_id": "1"}, token)
    second = post(client, "/api/v1/runs", {"process": "p", "external_id": "1"}, token)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    assert ProcessRun.objects.count() == 1
    assert Entry.objects.filter(action="run.registered").count() == 1


def test_another_account_cannot_take_over_a_run_by_registering_it_again(
    client, token, platform_token
):
    post(client, "/api/v1/runs", {"process": "p", "external_id": "1"}, token)
    response = post(client, "/api/v1/runs", {"process": "p", "external_id": "1"}, platform_token)
    assert response.status_code == 409
    assert "external_id" in response.json()["errors"]
    assert "id" not in response.json()


def test_the_same_action_key_twice_is_recorded_once(client, estate, token):
    run_id = _register(client, token)
    first = post(client, f"/api/v1/runs/{run_id}/actions", ACTIONS[0], token)
    second = post(client, f"/api/v1/runs/{run_id}/actions", ACTIONS[0], token)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    assert first.json()["sequence"] == 1 and first.json()["trace_id"] == TRACE
    assert ForwardAction.objects.count() == 1
    assert Entry.objects.filter(action="run.action_reported").count() == 1


def test_a_key_reused_for_a_different_action_is_a_conflict(client, estate, token):
    run_id = _register(client, token)
    post(client, f"/api/v1/runs/{run_id}/actions", ACTIONS[0], token)
    before = _counts()
    changed = ACTIONS[0] | {"params": {"order_id": "o-2"}}
    response = post(client, f"/api/v1/runs/{run_id}/actions", changed, token)
    assert response.status_code == 409
    assert "params" in response.json()["errors"]["idempotency_key"][0]
    assert _counts() == before


def test_reporting_the_failure_twice_changes_nothing(client, token):
    run_id = _register(client, token)
    post(client, f"/api/v1/runs/{run_id}/failure", {"reason": "first"}, token)
    response = post(client, f"/api/v1/runs/{run_id}/failure", {"reason": "second"}, token)
    assert response.status_code == 200 and response.json()["failure_reason"] == "first"
    assert Entry.objects.filter(action="run.failed").count() == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (ACTIONS[0] | {"params": ["not", "an", "object"]}, "params"),
        (ACTIONS[0] | {"before": "yesterday"}, "before"),
        ({k: v for k, v in ACTIONS[0].items() if k != "system"}, "system"),
        (ACTIONS[0] | {"system": "no-such-system"}, "system"),
        (ACTIONS[0] | {"status": "maybe"}, "status"),
        (ACTIONS[0] | {"idempotency_key": ""}, "idempotency_key"),
        (ACTIONS[0] | {"trace_id": "not-hex"}, "trace_id"),
        (ACTIONS[0] | {"parms": {}}, "parms"),
        ([ACTIONS[0]], "body"),
    ],
)
def test_a_bad_action_names_the_field_and_writes_nothing(client, estate, token, body, field):
    run_id = _register(client, token)
    before = _counts()
    response = post(client, f"/api/v1/runs/{run_id}/actions", body, token)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert field in errors and all(errors[field]), errors
    assert field in response.json()["detail"] or field == "body"
    assert _counts() == before


def test_a_body_that_is_not_json_is_refused_naming_the_problem(client, token):
    before = _counts()
    response = post(client, "/api/v1/runs", "process=p&external_id=1", token)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["errors"]["body"][0]
    response = post(client, "/api/v1/runs", b"\xff\xfe{", token)
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]
    assert _counts() == before


@pytest.mark.parametrize(
    ("raw", "problem", "field"),
    [
        ('{"process": "p", "external_id": "1\\u0000"}', "NUL character", "external_id"),
        ('{"process": "p", "external_id": "1", "x": {"\\u0000": 1}}', "NUL character", "x"),
        ('{"process": "p", "external_id": "1\\udbef"}', "lone UTF-16 surrogate", "external_id"),
        ('{"process": "p", "external_id": "1", "n": 1e400}', "overflows to infinity", "n"),
        (
            '{"process": "p", "external_id": "1", "trace_id": NaN}',
            "NaN is not a JSON number",
            "body",
        ),
        ('{"process": "p", "external_id": "1", "n": -Infinity}', "-Infinity is not", "body"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply", "body"),
        ("", "The body is empty", "body"),
        ("[]", "must be a JSON object", "body"),
    ],
)
def test_json_the_database_cannot_store_is_refused_not_a_500(client, token, raw, problem, field):
    """PostgreSQL refuses NaN, Infinity and lone surrogates in jsonb and NUL in text: they must
    not get as far as INSERT; what the parser can place is named by its field (issue 16)."""
    before = _counts()
    response = post(client, "/api/v1/runs", raw, token)
    assert response.status_code == 400, response.content
    assert problem in response.json()["errors"][field][0]
    assert _counts() == before


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"params": {"amount": 1e400}}', "params.amount"),
        ('{"before": {"rows": [1, 2, -1e999]}}', "before.rows[2]"),
        ('{"params": {"note": "\\udbef\\ude10\\udbef"}}', "params.note"),
        ('{"after": {"\\ud800": 1}}', "after"),
    ],
)
def test_an_action_the_database_cannot_store_names_the_field(client, estate, token, raw, field):
    """1e400 parses to inf in Python and jsonb refuses it; a lone surrogate likewise: a 400
    naming the field, not a 500 at INSERT (issue 16, findings 7 and 8)."""
    run_id = _register(client, token)
    body = json.dumps({k: v for k, v in ACTIONS[0].items() if k not in ("params", "after")})
    raw = body[:-1] + ", " + raw[1:]
    before = _counts()
    response = post(client, f"/api/v1/runs/{run_id}/actions", raw, token)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()
    assert _counts() == before


def test_a_run_without_a_process_is_refused(client, token):
    response = post(client, "/api/v1/runs", {"external_id": "1"}, token)
    assert response.status_code == 400
    assert response.json()["errors"] == {"process": ["This field is required."]}
    assert ProcessRun.objects.count() == 0


def test_a_bad_path_id_names_it(client, token):
    response = post(client, "/api/v1/runs/abc/actions", ACTIONS[0], token)
    assert response.status_code == 400 and "id" in response.json()["errors"]


def test_a_rollback_of_a_run_with_nothing_to_undo_names_the_run(client, estate, token):
    run_id = _register(client, token)
    before = _counts()
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token)
    assert response.status_code == 400
    assert "nothing to undo" in response.json()["errors"]["run"][0]
    assert _counts() == before


def test_a_rollback_without_a_reason_names_the_reason(client, estate, token):
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "   "}, token)
    assert response.status_code == 400 and "reason" in response.json()["errors"]
    assert Rollback.objects.count() == 0


@pytest.mark.parametrize(
    ("url", "body", "field", "limit"),
    [
        ("/api/v1/rollbacks", {"reason": "x" * 100_000}, "reason", "2000"),
        ("/api/v1/runs/{run}/failure", {"reason": "x" * 10_001}, "reason", "10000"),
    ],
)
def test_a_reason_over_its_limit_is_refused_naming_the_limit(
    client, estate, token, url, body, field, limit
):
    """The page caps a reason at 2,000 characters; the API did not (issue 16, finding 13)."""
    run_id = _register(client, token)
    _report_all(client, token, run_id, fail=False)
    before = _counts()
    response = post(
        client,
        url.format(run=run_id),
        {"run": run_id} | body if "{run}" not in url else body,
        token,
    )
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["errors"] and limit in response.json()["detail"]
    assert _counts() == before
    assert ProcessRun.objects.get(pk=run_id).failure_reason == ""


def test_a_run_still_running_is_not_rolled_back(client, estate, token):
    """No failure reported: the run may still be doing its work (issue 16, finding 11)."""
    run_id = _register(client, token)
    _report_all(client, token, run_id, fail=False)
    before = _counts()
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token)
    assert response.status_code == 400
    assert "still running" in response.json()["errors"]["run"][0]
    assert _counts() == before


@pytest.mark.parametrize("ended", ["succeeded", "partially_rolled_back"])
def test_a_run_already_rolled_back_is_not_rolled_back_again(client, estate, token, ended):
    """A second unwind would undo the undo's targets again (issue 16, finding 12); a drill
    of it is still allowed: it touches no production target."""
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    first = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).json()
    Rollback.objects.filter(pk=first["id"]).update(state=ended)
    before = _counts()
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "again"}, token)
    assert response.status_code == 400
    assert f"already rolled back by rollback #{first['id']}" in response.json()["errors"]["run"][0]
    assert _counts() == before
    drill = post(
        client, "/api/v1/rollbacks", {"run": run_id, "reason": "practice", "drill": True}, token
    )
    assert drill.status_code == 201, drill.content


def test_a_second_rollback_while_one_is_under_way_is_refused(client, estate, token):
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    assert (
        post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).status_code == 201
    )
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token)
    assert response.status_code == 400 and "under way" in response.json()["errors"]["run"][0]
    assert Rollback.objects.count() == 1


def test_a_run_can_be_rolled_back_again_after_an_aborted_rollback(
    client, estate, token, payments_bot
):
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    first = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).json()
    engine.rollback_abort(
        rollback=Rollback.objects.get(pk=first["id"]), actor=payments_bot, reason="wrong plan"
    )
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "again"}, token)
    assert response.status_code == 201
    # The second plan reuses the first one's idempotency keys: a target that already undid
    # an action sees the same key and does not undo it twice.
    keys = [
        {s.idempotency_key for s in Rollback.objects.get(pk=pk).steps.all()}
        for pk in (first["id"], response.json()["id"])
    ]
    assert keys[0] == keys[1]


# --------------------------------------------------------------------------- who may do what


@pytest.mark.parametrize("header", [None, "Bearer unw_wrong", "Basic dXNlcjpwYXNz", "Bearer"])
def test_without_a_valid_token_every_endpoint_answers_401(client, estate, token, header):
    run_id = _register(client, token)
    before = _counts()
    headers = {"Authorization": header} if header else {}
    for method, url, body in [
        ("post", "/api/v1/runs", {"process": "p", "external_id": "2"}),
        ("post", f"/api/v1/runs/{run_id}/actions", ACTIONS[0]),
        ("post", f"/api/v1/runs/{run_id}/failure", {"reason": "x"}),
        ("post", "/api/v1/rollbacks", {"run": run_id, "reason": "x"}),
        ("get", "/api/v1/rollbacks/1", None),
    ]:
        if method == "post":
            response = client.post(
                url, json.dumps(body), content_type="application/json", headers=headers
            )
        else:
            response = client.get(url, headers=headers)
        assert response.status_code == 401, (url, response.content)
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["detail"] and "Authorization" in response.json()["errors"]
    assert _counts() == before


def test_a_revoked_token_is_refused(client, payments_bot, dave):
    token, raw = token_create(user=payments_bot, name="soon revoked")
    assert (
        post(client, "/api/v1/runs", {"process": "p", "external_id": "1"}, raw).status_code == 201
    )
    token_revoke(token=token, actor=dave)
    response = post(client, "/api/v1/runs", {"process": "p", "external_id": "2"}, raw)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_another_teams_run_and_rollback_are_404(client, estate, token, platform_token):
    run_id = _register(client, token)
    _report_all(client, token, run_id)  # every action is on payments' systems
    rollback_id = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).json()[
        "id"
    ]
    before = _counts()
    response = post(client, f"/api/v1/runs/{run_id}/actions", ACTIONS[0], platform_token)
    assert response.status_code == 404 and response.json()["detail"] == "No such process run."
    response = post(client, f"/api/v1/runs/{run_id}/failure", {"reason": "x"}, platform_token)
    assert response.status_code == 404
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, platform_token)
    assert response.status_code == 404 and "run" in response.json()["errors"]
    response = get(client, f"/api/v1/rollbacks/{rollback_id}", platform_token)
    assert response.status_code == 404 and response.json()["detail"] == "No such rollback."
    assert _counts() == before


def test_an_auditor_account_may_read_but_not_report(client, estate, token, django_user_model):
    run_id = _register(client, token)
    _report_all(client, token, run_id)
    rollback_id = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, token).json()[
        "id"
    ]
    auditor = _account(django_user_model, "audit-bot", "auditor")
    _, audit_token = token_create(user=auditor, name="audit")
    assert get(client, f"/api/v1/rollbacks/{rollback_id}", audit_token).status_code == 200
    response = post(client, "/api/v1/runs", {"process": "p", "external_id": "9"}, audit_token)
    assert response.status_code == 403 and response.json()["detail"]
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "x"}, audit_token)
    assert response.status_code == 403
    assert Entry.objects.filter(outcome="refused", actor="user:audit-bot").count() == 2


# --------------------------------------------------------------------------- limits


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_a_body_over_the_limit_is_413_and_writes_nothing(client, estate, token):
    run_id = _register(client, token)
    before = _counts()
    big = ACTIONS[0] | {"params": {"blob": "x" * 3000}}
    response = post(client, f"/api/v1/runs/{run_id}/actions", big, token)
    assert response.status_code == 413
    assert "2048 bytes" in response.json()["detail"] and response.json()["limit_bytes"] == 2048
    assert _counts() == before
    small = ACTIONS[0] | {"params": {"blob": "x" * 1000}}
    assert post(client, f"/api/v1/runs/{run_id}/actions", small, token).status_code == 201


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_a_chunked_body_over_the_limit_is_refused_after_reading_limit_plus_one(token):
    """No Content-Length (chunked under ASGI): at most limit + 1 bytes are read."""
    from django.core.handlers.asgi import ASGIRequest

    from rollbacks.middleware import ApiBodyLimitMiddleware

    class CountingStream(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            data = super().read(size)
            self.read_bytes += len(data)
            return data

        def seekable(self):  # a plain socket stream: no size known in advance
            return False

    def make(body: bytes):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/runs",
            "headers": [(b"content-type", b"application/json")],
        }
        stream = CountingStream(body)
        return ASGIRequest(scope, stream), stream

    called = []

    def view(request):
        called.append(request)
        return HttpResponse("ok")

    middleware = ApiBodyLimitMiddleware(view)
    big_request, big_stream = make(b"x" * 10_000)
    response = middleware(big_request)
    assert response.status_code == 413 and not called
    assert json.loads(response.content)["limit_bytes"] == 2048
    assert big_stream.read_bytes == 2049

    ok_request, _ = make(b'{"process": "p"}')
    assert middleware(ok_request).status_code == 200
    assert called == [ok_request] and ok_request.body == b'{"process": "p"}'


def test_unknown_api_urls_answer_json(client, token):
    response = get(client, "/api/v1/no-such-thing", token)
    assert response.status_code == 404 and response.json()["detail"]
    response = client.delete("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405 and response.json()["detail"]


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_schema_documents_every_path_field_and_the_bearer_scheme(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/runs", "post"),
        ("/api/v1/runs/{id}/actions", "post"),
        ("/api/v1/runs/{id}/failure", "post"),
        ("/api/v1/rollbacks", "post"),
        ("/api/v1/rollbacks/{id}", "get"),
    ]:
        operation = paths[path][method]
        assert operation["security"] == [{"ServiceToken": []}], path
        assert "401" in operation["responses"] and "400" in operation["responses"]
        assert operation["summary"] and operation["description"]
        for parameter in operation.get("parameters", []):
            assert parameter["description"], f"{path} {parameter['name']} is not documented"
    assert schema["components"]["securitySchemes"]["ServiceToken"] == {
        "type": "http",
        "scheme": "bearer",
    }
    for name, component in schema["components"]["schemas"].items():
        for field, prop in component.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} is not documented"
    action_in = schema["components"]["schemas"]["ActionIn"]
    assert set(action_in["required"]) == {"system", "action_type", "idempotency_key"}
    assert action_in["properties"]["params"]["examples"]


# --------------------------------------------------------------------------- the command


def test_a_token_from_the_command_works_against_the_api(client, estate, teams):
    out = io.StringIO()
    call_command(
        "create_service_token", "ci-orders", "--name", "orders", "--create-user",
        "--role", "operator", "--team", "payments", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    raw = out.getvalue().strip()
    run_id = _register(client, raw)
    _report_all(client, raw, run_id)
    response = post(client, "/api/v1/rollbacks", {"run": run_id, "reason": "undo"}, raw)
    assert response.status_code == 201 and response.json()["requested_by"] == "ci-orders"
    assert Step.objects.filter(rollback_id=response.json()["id"]).count() == 3
