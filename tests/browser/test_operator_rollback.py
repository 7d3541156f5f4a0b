"""In Chromium, an operator plans, starts and follows the demo rollback to its end, with a
real Celery worker (Redis, PostgreSQL), the demo's loopback targets and its SQL target."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from django.core.management import call_command

from rollbacks.management.commands.seed_demo import DEMO_PASSWORD
from rollbacks.models import Rollback
from tests.browser.conftest import screenshot
from tests.conftest import WORKER_ARGS, start_celery, stop_process

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def demo_stack(transactional_db, demo_targets, tmp_path, monkeypatch):
    """The demo as `make run` serves it: estate, users, the failed run, targets, a worker."""
    import os

    import redis

    orders_db = tmp_path / "demo-orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{orders_db}")
    call_command("seed_demo")
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    yield {"orders_db": orders_db, "targets": demo_targets}
    stop_process(worker)


def _log_in(page, base, username):
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")  # the overview


def _approve_as(*usernames):
    from django.contrib.auth import get_user_model

    from governance import services

    rollback = Rollback.objects.get()
    for username in usernames:
        services.rollback_approve(
            rollback=rollback,
            approver=get_user_model().objects.get(username=username),
            comment="plan checked",
            attestations={"pii": "no personal data in these orders"},
        )


def test_operator_plans_starts_and_follows_the_demo_rollback_to_its_end(
    page, live_server, demo_stack
):
    base = live_server.url
    _log_in(page, base, "alice")
    page.get_by_role("link", name="Runs").click()
    page.get_by_role("link", name="checkout-migration").first.click()
    assert page.get_by_role("heading", name=re.compile("checkout-migration")).is_visible()
    page.get_by_label("Reason").fill("checkout migration failed half-way; undo it")
    screenshot(page, "operator-1-run")
    page.get_by_role("button", name="Plan rollback").click()
    page.wait_for_url(re.compile(r"/rollbacks/\d+/$"))
    status = page.locator("#rollback-status")
    # The demo's `critical` policy wants two approvers for tier-1 systems: bob and erin
    # approve (in the browser, that is tests/browser/test_approval_flow.py).
    assert status.locator(".badge").first.inner_text() == "awaiting approval"
    _approve_as("bob", "erin")
    page.reload()
    assert "approved" in status.locator(".badge").first.inner_text()
    # The plan preview shows every step before anything runs: nine actions, three stages.
    assert page.get_by_role("heading", name=re.compile(r"^Stage \d")).count() == 3
    assert page.locator("text=payment-gateway").count() >= 1
    screenshot(page, "operator-2-plan")
    page.get_by_role("button", name="Start rollback").click()

    # Follow it live (htmx polls the status fragment every second): no reload from here on.
    deadline = time.monotonic() + 120
    resolved = False
    while time.monotonic() < deadline:
        state = status.locator(".badge").first.inner_text()
        if state in ("succeeded", "partially rolled back", "failed", "aborted"):
            break
        retry = page.get_by_role("button", name=re.compile(r"^Retry step \d+"))
        if retry.count():  # the simulated billing-db step fails 20% of the time, 3 tries
            retry.first.click()
        resolve = page.get_by_role("button", name=re.compile(r"^Resolve step \d+"))
        if not resolved and resolve.count():
            screenshot(page, "operator-3-waiting-for-human")
            step_id = re.search(r"\d+", resolve.first.inner_text()).group()
            page.get_by_label(f"What was done by hand for step {step_id}?").fill(
                "refunded pay_3fa9 in the console"
            )
            resolve.first.click()
            resolved = True
        page.wait_for_timeout(500)
    assert status.locator(".badge").first.inner_text() == "succeeded"
    assert page.get_by_role("heading", name="Outcome").is_visible()
    assert "Nothing: every step was undone." in status.inner_text()
    screenshot(page, "operator-4-succeeded")
    assert page.csp_violations == []

    # What the browser showed is what happened on the targets.
    rollback = Rollback.objects.get()
    assert rollback.state == Rollback.State.SUCCEEDED and resolved
    conn = sqlite3.connect(demo_stack["orders_db"])
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    conn.close()
    paths = sorted(e["path"] for e in demo_stack["targets"].effects)
    assert (
        "/flags/api/admin/projects/default/features/new-checkout/environments/production/off"
        in paths
    )
    assert (
        "/orders-api/orders/1001/cancel" in paths and "/billing-api/invoices/inv-5521/void" in paths
    )
