"""A whole rollback through the API alone, against a real worker and loopback targets:
register a run, report its actions and its failure, request the rollback, have a second
account approve it (the requester's own approve is refused), start it, follow it to the end."""

from __future__ import annotations

import json
import os
import time

import pytest

from governance.models import ApprovalPolicy
from tests.conftest import WORKER_ARGS, service_token, start_celery, stop_process
from tests.rollbacks import engine_estate

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.django_db(transaction=True),
]


def test_whole_rollback_through_the_api(
    client, make_system, target_server, tmp_path, monkeypatch, django_user_model
):
    import redis

    base, target = target_server
    db_path = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{db_path}")
    engine_estate.make_orders_db(db_path, [1, 2])
    engine_estate.build(make_system, base)
    ApprovalPolicy.objects.create(name="tier-1", tiers=[1], approvals_required=1)
    # The reporting account may approve too, in general: four-eyes still keeps it off its own.
    reporter = service_token(
        django_user_model, "checkout-bot", "operator", "approver", "team:payments"
    )
    approver = service_token(django_user_model, "approver-bot", "approver", "team:payments")
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")

    def call(token, method, url, body=None):
        response = client.generic(
            method,
            f"/api/v1{url}",
            json.dumps(body) if body is not None else "",
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
        return response.status_code, response.json()

    try:
        status, run = call(
            reporter, "POST", "/runs", {"process": "checkout-migration", "external_id": "7"}
        )
        assert status == 201
        actions = [
            ("flags", "enable_flag", {"flag": "f"}),
            ("orders-db", "insert_order", {"order_id": 1}),
            ("orders-api", "create_order", {"order_id": 1}),
        ]
        for i, (system, action_type, params) in enumerate(actions):
            body = {
                "system": system,
                "action_type": action_type,
                "params": params,
                "idempotency_key": f"a{i}",
            }
            assert call(reporter, "POST", f"/runs/{run['id']}/actions", body)[0] == 201
            assert (
                call(reporter, "POST", f"/runs/{run['id']}/actions", body)[0] == 200
            )  # recorded once
        assert (
            call(reporter, "POST", f"/runs/{run['id']}/failure", {"reason": "timed out"})[0] == 200
        )
        status, rollback = call(
            reporter, "POST", "/rollbacks", {"run": run["id"], "reason": "undo run 7"}
        )
        assert status == 201 and rollback["awaits_approval"] is True
        rid = rollback["id"]
        assert [len(s["steps"]) for s in rollback["stages"]] == [1, 1, 1]

        status, refused = call(
            reporter, "POST", f"/rollbacks/{rid}/approve", {"comment": "mine, looks fine"}
        )
        assert status == 403 and "four-eyes" in refused["detail"]
        assert call(reporter, "POST", f"/rollbacks/{rid}/start", {})[0] == 400  # not approved yet
        status, approved = call(
            approver, "POST", f"/rollbacks/{rid}/approve", {"comment": "checked the plan"}
        )
        assert status == 200 and approved["state"] == "approved"
        assert call(reporter, "POST", f"/rollbacks/{rid}/start", {})[1]["state"] == "running"

        deadline = time.monotonic() + 60
        while (state := call(reporter, "GET", f"/rollbacks/{rid}")[1])["state"] == "running":
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["state"] == "succeeded", state
        assert all(s["state"] == "succeeded" for st in state["stages"] for s in st["steps"])
        assert engine_estate.order_ids(db_path) == [2]
        assert [e["path"] for e in target.effects] == ["/orders-api/orders/1/cancel"]
    finally:
        stop_process(worker)
