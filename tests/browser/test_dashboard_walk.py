"""In Chromium, the three roles' work through the dashboard, against a live server, a real
Celery worker (Redis, PostgreSQL), the demo's loopback targets and real health probes:

1. alice (operator) lands on the overview, plans the demo rollback, and sees it under way;
2. bob (approver) finds it among his pending approvals on his overview and approves it;
3. alice starts it and follows it to its end; the overview no longer lists it;
4. carol (auditor) opens the metrics (filtered by a system), the ledger, and a system's
   health history, and the rollback page shows its systems' health before and after.

Keyboard use (Tab reaches the navigation with a visible focus ring) and the laptop widths
(1280 and 1024 px: no horizontal scrolling of the page) are checked on the way; screenshots
go to screenshots/dashboard-*.png. The operator's and approver's detailed flows (four-eyes,
attestations, retries) are in test_operator_rollback.py and test_approval_flow.py.
"""

from __future__ import annotations

import re
import time

import pytest

from rollbacks.health import check_health
from rollbacks.models import HealthCheck, Rollback, System
from tests.browser.conftest import screenshot

# The approval flow's stack: the demo, targets, a worker, and one policy (tier 1: one
# approval with the personal-data attestation; alice is an approver too, four-eyes applies).
from tests.browser.test_approval_flow import FINISHED, _badge, _log_in, demo_stack  # noqa: F401

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(300),
    pytest.mark.django_db(transaction=True),
]


def _probe_every_system() -> None:
    """What beat does every 30 s: a real probe of each system's health check."""
    for system in System.objects.exclude(health_check={}):
        check_health(system)


def _fits(page, width: int) -> None:
    """At this viewport width the page does not scroll sideways."""
    page.set_viewport_size({"width": width, "height": 900})
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} is {scroll} px wide at {width} px"


def _tab_to(page, name: str, limit: int = 30) -> None:
    """Press Tab until the link called ``name`` has focus; its focus ring must show."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == name:
            style = page.evaluate(
                "[getComputedStyle(document.activeElement).outlineStyle,"
                " getComputedStyle(document.activeElement).outlineWidth]"
            )
            assert style[0] not in ("", "none") and style[1] != "0px", style
            return
    pytest.fail(f"Tab never reached {name!r}")


def test_operator_approver_and_auditor_work_through_the_dashboard(
    browser,
    page,
    live_server,
    demo_stack,  # noqa: F811
):
    base = live_server.url
    _probe_every_system()

    # 1. Alice lands on the overview: every system's health in words, nothing under way.
    _log_in(page, base, "alice")
    health = page.locator("section[aria-labelledby=health-title]")
    assert health.locator("tbody tr").count() == 7
    assert "healthy" in health.inner_text()
    assert health.get_by_role("columnheader", name="Last check").count() == 1
    assert "No rollback under way." in page.locator("#overview-live").inner_text()
    screenshot(page, "dashboard-1-operator-overview-1280")
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("link", name="checkout-migration").first.click()
    page.get_by_label("Reason").fill("checkout migration failed half-way; undo it")
    page.get_by_role("button", name="Plan rollback").click()
    page.wait_for_url(re.compile(r"/rollbacks/\d+/$"))
    rollback = Rollback.objects.get()
    assert _badge(page) == "awaiting approval"
    page.get_by_role("link", name="Overview").click()
    row = page.locator(f"#active-{rollback.pk}")
    assert "awaiting approval" in row.inner_text() and "0 of 9 steps done" in row.inner_text()
    screenshot(page, "dashboard-2-operator-overview-rollback-planned")

    # 2. Bob finds it among his pending approvals on his overview, and approves it.
    bob_context = browser.new_context(viewport={"width": 1280, "height": 900})
    bob = bob_context.new_page()
    try:
        _log_in(bob, base, "bob")
        pending = bob.locator(f"#overview-pending-{rollback.pk}")
        assert "0 of 1 approvals" in pending.inner_text() and "alice" in pending.inner_text()
        screenshot(bob, "dashboard-3-approver-overview-pending")
        pending.get_by_role("link", name=f"Rollback #{rollback.pk}").click()
        bob.get_by_label("Your comment").fill("plan checked with the payments on-call")
        bob.get_by_label("Personal data impact checked", exact=True).check()
        bob.get_by_label("What you checked for “Personal data impact checked”").fill(
            "order rows hold no personal data"
        )
        bob.get_by_role("button", name=f"Approve rollback #{rollback.pk}").click()
        bob.wait_for_url(re.compile(rf"/rollbacks/{rollback.pk}/$"))
        assert _badge(bob) == "approved"
        bob.get_by_role("link", name="Overview").click()
        # The overview's "Needs action" (issue 15) replaced "My pending approvals".
        assert (
            "Nothing needs action from you right now." in bob.locator("#overview-live").inner_text()
        )
    finally:
        bob_context.close()

    # 3. Alice's overview refreshes by itself (htmx, every 10 s); she starts and follows it.
    page.locator(f"#active-{rollback.pk}", has_text="approved").wait_for(timeout=15000)
    page.get_by_role("link", name=f"Rollback #{rollback.pk}").first.click()
    page.get_by_role("button", name="Start rollback").click()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and _badge(page) not in FINISHED:
        retry = page.get_by_role("button", name=re.compile(r"^Retry step \d+"))
        if retry.count():  # the simulated billing-db step fails 20% of the time, 3 tries
            retry.first.click()
        resolve = page.get_by_role("button", name=re.compile(r"^Resolve step \d+"))
        if resolve.count():
            step_id = re.search(r"\d+", resolve.first.inner_text()).group()
            page.get_by_label(f"What was done by hand for step {step_id}?").fill(
                "refunded pay_3fa9 in the console"
            )
            resolve.first.click()
        page.wait_for_timeout(500)
    assert _badge(page) == "succeeded"
    _probe_every_system()  # the checks after the rollback
    page.get_by_role("link", name="Overview").click()
    assert page.locator(f"#active-{rollback.pk}").count() == 0
    screenshot(page, "dashboard-4-operator-overview-after")
    _fits(page, 1024)
    screenshot(page, "dashboard-4-operator-overview-1024")
    assert page.csp_violations == []

    # 4. Carol, the auditor: metrics, by keyboard; a system filter; the ledger; health history.
    carol_context = browser.new_context(viewport={"width": 1280, "height": 900})
    carol = carol_context.new_page()
    carol_csp: list[str] = []
    carol.on(
        "console",
        lambda msg: carol_csp.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    try:
        _log_in(carol, base, "carol")
        _tab_to(carol, "Metrics")
        screenshot(carol, "dashboard-5-auditor-keyboard-focus-on-metrics")
        carol.keyboard.press("Enter")
        carol.wait_for_url(f"{base}/metrics/")
        summary = carol.locator("#metrics-summary").inner_text()
        assert "1 (1 succeeded, 0 failed or partial, 0 aborted)" in summary
        assert carol.locator("#drill-count").inner_text() == "0 drills"
        assert carol.locator("figure.chart svg").count() >= 5
        assert "stage 1" in carol.locator("#table-stages").inner_text()
        _fits(carol, 1280)
        screenshot(carol, "dashboard-6-auditor-metrics-1280")
        _fits(carol, 1024)
        screenshot(carol, "dashboard-6-auditor-metrics-1024")
        carol.get_by_role("combobox", name="System").select_option("flags")
        carol.get_by_role("button", name="Show").click()
        carol.wait_for_url(re.compile(r"system=flags"))
        assert "that touched flags" in carol.locator("main").inner_text()
        carol.get_by_label("To (inclusive):", exact=True).fill("2020-01-01")
        carol.get_by_role("button", name="Show").click()
        assert "“To” must be on or after “From”." in carol.get_by_role("alert").inner_text()

        carol.get_by_role("link", name="Ledger").click()
        carol.get_by_label("Rollback", exact=True).fill(str(rollback.pk))
        carol.get_by_role("button", name="Search").click()
        assert carol.locator("tbody tr").count() >= 5
        screenshot(carol, "dashboard-7-auditor-ledger")

        carol.get_by_role("link", name="Systems", exact=True).click()
        carol.get_by_role("link", name="orders-api", exact=True).first.click()
        carol.wait_for_url(f"{base}/systems/orders-api/")
        checks = HealthCheck.objects.filter(system__slug="orders-api").count()
        assert carol.locator("figure.health-strip rect.tick").count() == checks == 2
        assert f"Rollback #{rollback.pk}" in carol.locator("main").inner_text()
        screenshot(carol, "dashboard-8-auditor-system-health-history")
        carol.get_by_role("link", name=f"Rollback #{rollback.pk}").click()
        around = carol.locator("#health-around")
        touched = rollback.steps.values("system").distinct().count()
        assert around.locator("tbody tr").count() == touched
        assert "healthy" in around.inner_text() and "not ended yet" not in around.inner_text()
        screenshot(carol, "dashboard-9-auditor-health-before-after")
        assert carol_csp == []
    finally:
        carol_context.close()
