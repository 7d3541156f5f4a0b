"""In Chromium: an operator requests a rollback, the requester's own approval is refused, a
second user approves in another browser, and the rollback runs, on a real Celery worker
(Redis, PostgreSQL) against the demo's loopback targets and its SQL target."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from governance.models import Approval, ApprovalPolicy
from ledger.models import Entry
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
FINISHED = ("succeeded", "partially rolled back", "failed", "aborted")


@pytest.fixture
def demo_stack(transactional_db, demo_targets, tmp_path, monkeypatch):
    """The demo as `make run` serves it, with one policy instead of the demo's: tier-1
    systems need one approval from the approver role, with the personal-data attestation."""
    import os

    import redis

    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'demo-orders.sqlite3'}")
    call_command("seed_demo")
    ApprovalPolicy.objects.update(is_active=False)
    policy = ApprovalPolicy.objects.create(
        name="one-approver",
        tiers=[1],
        approvals_required=1,
        four_eyes=True,
        expires_after_s=1800,
        attestations=[{"key": "pii", "label": "Personal data impact checked"}],
    )
    policy.eligible_groups.set([Group.objects.get(name="approver")])
    # Alice is an approver too here, so that only four-eyes stands between her and approving.
    Group.objects.get(name="approver").user_set.add(
        *Group.objects.get(name="operator").user_set.all()
    )
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    yield
    stop_process(worker)


def _log_in(page, base, username):
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")  # the overview


def _badge(page) -> str:
    return page.locator("#rollback-status .status-line .badge").first.inner_text()


def _wait_for_state(page, wanted: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while _badge(page) != wanted and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert _badge(page) == wanted


def test_requester_is_refused_a_second_user_approves_and_the_rollback_runs(
    browser, page, live_server, demo_stack
):
    base = live_server.url

    # 1. Alice (operator, and an approver here) requests the rollback of the failed run.
    _log_in(page, base, "alice")
    page.get_by_role("link", name="Runs").click()
    page.get_by_role("link", name="checkout-migration").first.click()
    page.get_by_label("Reason").fill("checkout migration failed half-way; undo it")
    page.get_by_role("button", name="Plan rollback").click()
    page.wait_for_url(re.compile(r"/rollbacks/\d+/$"))
    rollback = Rollback.objects.get()
    assert _badge(page) == "awaiting approval"
    policy = page.locator("#policy-decision")
    assert (
        "one-approver" in policy.inner_text()
        and "Received 0 of 1 approvals: 1 more needed" in policy.inner_text()
    )

    # 2. Her own approval is refused: no button, the reason, and a forged POST gets 403.
    panel = page.locator("#approval-panel")
    assert "four-eyes: the requester never approves their own rollback" in panel.inner_text()
    assert page.get_by_role("button", name=re.compile("^Approve")).count() == 0
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forged = page.request.post(
        f"{base}/rollbacks/{rollback.pk}/approve",
        form={
            "csrfmiddlewaretoken": csrf,
            "comment": "my own rollback looks fine",
            "attest-pii": "on",
            "attest-pii-comment": "checked",
        },
        headers={"Referer": page.url},
    )
    assert forged.status == 403
    assert Entry.objects.filter(action="approval.give", outcome="refused").exists()
    screenshot(page, "approval-1-requester-refused")

    # 3. Bob, in his own browser, finds it among his pending approvals and approves it.
    bob_context = browser.new_context(viewport={"width": 1280, "height": 900})
    bob = bob_context.new_page()
    bob_csp: list[str] = []
    bob.on(
        "console",
        lambda msg: bob_csp.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    try:
        _log_in(bob, base, "bob")
        nav_approvals = bob.get_by_role("navigation").get_by_role(
            "link", name=re.compile("^Approvals")
        )
        bob.locator("#approvals-count.badge").wait_for()  # htmx loads the count
        assert "1" in nav_approvals.inner_text()
        nav_approvals.click()
        row = bob.locator(f"#pending-{rollback.pk}")
        assert "one-approver" in row.inner_text() and "alice" in row.inner_text()
        screenshot(bob, "approval-2-pending-approvals")
        row.get_by_role("link", name=f"Rollback #{rollback.pk}").click()
        bob.wait_for_url(re.compile(rf"/rollbacks/{rollback.pk}/"))
        blast = bob.locator("#approval-panel .blast-radius").inner_text()
        assert "payment-gateway" in blast and "Payments" in blast
        bob.get_by_label("Your comment").fill("plan checked with the payments on-call")
        # Without the attestation the approval is refused next to the field; nothing is written.
        bob.get_by_role("button", name=f"Approve rollback #{rollback.pk}").click()
        assert (
            "Tick “Personal data impact checked” to attest it."
            in bob.locator("#attestation-pii").inner_text()
        )
        assert not Approval.objects.exists()
        bob.get_by_label("Personal data impact checked", exact=True).check()
        bob.get_by_label("What you checked for “Personal data impact checked”").fill(
            "order rows hold no personal data"
        )
        screenshot(bob, "approval-3-approval-panel")
        bob.get_by_role("button", name=f"Approve rollback #{rollback.pk}").click()
        bob.wait_for_url(re.compile(rf"/rollbacks/{rollback.pk}/$"))
        assert (
            f"You approved rollback #{rollback.pk}: it may start."
            in bob.locator(".messages").inner_text()
        )
        assert _badge(bob) == "approved"
        screenshot(bob, "approval-4-approved-by-bob")
        assert bob_csp == []
    finally:
        bob_context.close()

    # 4. Alice's page follows without a reload; she starts the rollback and it runs.
    _wait_for_state(page, "approved")
    assert "bob" in page.locator("#policy-decision table").inner_text()
    page.get_by_role("button", name="Start rollback").click()
    status = page.locator("#rollback-status")
    deadline = time.monotonic() + 120
    resolved = False
    while time.monotonic() < deadline and _badge(page) not in FINISHED:
        retry = page.get_by_role("button", name=re.compile(r"^Retry step \d+"))
        if retry.count():  # the simulated billing-db step fails 20% of the time, 3 tries
            retry.first.click()
        resolve = page.get_by_role("button", name=re.compile(r"^Resolve step \d+"))
        if not resolved and resolve.count():
            screenshot(page, "approval-5-running-manual-step")
            step_id = re.search(r"\d+", resolve.first.inner_text()).group()
            page.get_by_label(f"What was done by hand for step {step_id}?").fill(
                "refunded pay_3fa9 in the console"
            )
            resolve.first.click()
            resolved = True
        page.wait_for_timeout(500)
    assert _badge(page) == "succeeded" and resolved
    assert "Nothing: every step was undone." in status.inner_text()
    screenshot(page, "approval-6-succeeded")
    assert page.csp_violations == []

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED
    approval = Approval.objects.get()
    assert approval.approver.username == "bob"
    assert approval.attestations == {"pii": "order rows hold no personal data"}
    actions = list(
        Entry.objects.filter(rollback_id=rollback.pk)
        .exclude(action__startswith="step.")
        .exclude(action__startswith="stage.")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions.index("approval.given") < actions.index("rollback.approved")
    assert actions.index("rollback.approved") < actions.index("rollback.started")
