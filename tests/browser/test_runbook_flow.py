"""In Chromium: an operator instantiates a runbook in a few clicks (a field error first), an
approver approves, and the rollback runs to succeeded on a real Celery worker (Redis,
PostgreSQL) against the demo's loopback targets and its SQL target database."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from governance.models import Approval, ApprovalPolicy
from ledger.models import Entry
from rollbacks.models import Rollback
from runbooks.models import RunbookInstance
from tests.browser.conftest import screenshot
from tests.browser.test_approval_flow import _badge, _log_in, _wait_for_state
from tests.conftest import WORKER_ARGS, start_celery, stop_process

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def runbook_stack(transactional_db, demo_targets, tmp_path, monkeypatch):
    """The demo as `make run` serves it (runbooks included), with one policy instead of the
    demo's: every rollback needs one approval from the approver role. (The demo pre-approves
    the cancel-order runbook; here it must wait for bob.)"""
    import os

    import redis

    orders_db = tmp_path / "demo-orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{orders_db}")
    call_command("seed_demo")
    ApprovalPolicy.objects.update(is_active=False)
    policy = ApprovalPolicy.objects.create(name="one-approver", approvals_required=1)
    policy.eligible_groups.set([Group.objects.get(name="approver")])
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    yield orders_db, demo_targets
    stop_process(worker)


def _order_ids(path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]
    finally:
        conn.close()


def test_operator_instantiates_a_runbook_an_approver_approves_and_it_runs(
    browser, page, live_server, runbook_stack
):
    orders_db, targets = runbook_stack
    base = live_server.url
    assert _order_ids(orders_db) == [1001, 1002]

    # 1. Alice finds the runbook and submits it without the order: the error is at the field.
    _log_in(page, base, "alice")
    page.get_by_role("navigation").get_by_role("link", name="Runbooks").click()
    page.wait_for_url(f"{base}/runbooks/")
    assert "Disable the checkout flag and void invoices" in page.locator("main").inner_text()
    screenshot(page, "runbook-1-list")
    page.get_by_role("link", name="Cancel a stuck order").click()
    page.get_by_label("Order event").fill("evt-7781")
    page.get_by_label("Reason").fill("orders-api 4.2 created order 1001 twice; no run log")
    page.get_by_role("button", name="Plan rollback from runbook").click()
    order = page.locator("#id_param_order_id")
    assert page.get_by_label("Order (required)", exact=True).count() == 1
    assert order.get_attribute("aria-invalid") == "true"
    assert "Order is required." in page.locator("#field-param_order_id").inner_text()
    assert not Rollback.objects.exists()
    screenshot(page, "runbook-2-field-error")

    # 2. She fills it in (the channel keeps its default) and plans the rollback.
    order.fill("1001")
    assert page.get_by_label("Sales channel").input_value() == "web"
    page.get_by_role("button", name="Plan rollback from runbook").click()
    page.wait_for_url(re.compile(r"/rollbacks/\d+/$"))
    rollback = Rollback.objects.get()
    assert rollback.trigger == "runbook" and _badge(page) == "awaiting approval"
    assert "cancel-order v1" in page.locator("#rollback-runbook").inner_text()
    assert "one-approver" in page.locator("#policy-decision").inner_text()
    screenshot(page, "runbook-3-awaiting-approval")

    # 3. Bob approves in his own browser.
    bob_context = browser.new_context(viewport={"width": 1280, "height": 900})
    bob = bob_context.new_page()
    try:
        _log_in(bob, base, "bob")
        bob.goto(f"{base}/rollbacks/{rollback.pk}/")
        assert "cancel-order v1" in bob.locator("#rollback-runbook").inner_text()
        bob.get_by_label("Your comment").fill("order 1001 is the duplicate; cancel it")
        bob.get_by_role("button", name=f"Approve rollback #{rollback.pk}").click()
        bob.wait_for_url(re.compile(rf"/rollbacks/{rollback.pk}/$"))
        assert _badge(bob) == "approved"
        screenshot(bob, "runbook-4-approved-by-bob")
    finally:
        bob_context.close()

    # 4. Alice starts it; the worker undoes the order in the API, the queue and the database.
    _wait_for_state(page, "approved")
    page.get_by_role("button", name="Start rollback").click()
    _wait_for_state(page, "succeeded", seconds=90)
    screenshot(page, "runbook-5-succeeded")
    assert page.csp_violations == []

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED
    assert Approval.objects.get().approver.username == "bob"
    assert _order_ids(orders_db) == [1002]
    paths = {effect["path"] for effect in targets.effects}
    assert {"/orders-api/orders/1001/cancel", "/events-queue/retract/evt-7781"} <= paths
    instance = RunbookInstance.objects.get()
    assert instance.rollback == rollback and instance.values["channel"] == "web"
    actions = list(
        Entry.objects.filter(rollback_id=rollback.pk)
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions.index("runbook.instantiated") < actions.index("approval.given")
    assert actions.index("approval.given") < actions.index("rollback.started")

    # 5. Alice opens the post-incident report and downloads it as Markdown.
    page.locator("#report-link").click()
    page.wait_for_url(f"{base}/rollbacks/{rollback.pk}/report")
    assert "Post-incident report" in page.locator("main").inner_text()
    screenshot(page, "runbook-6-report")
    with page.expect_download() as download_info:
        page.locator("#report-download-md").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".md")
    report = Path(download.path()).read_text(encoding="utf-8")
    assert report.startswith(f"# Post-incident report: rollback #{rollback.pk}")
    assert "## Runbook" in report and "cancel-order v1" in report
    assert "Parameter order_id | 1001" in report
    assert "bob" in report and "order 1001 is the duplicate; cancel it" in report
    assert Entry.objects.filter(rollback_id=rollback.pk, action="report.exported").exists()
