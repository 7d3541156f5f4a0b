"""In Chromium: the rollback page loads its reconciliation panel (htmx, under the strict CSP),
an operator dismisses one finding and adds the other as a follow-up stage with the keyboard
and mouse, and the page says the rollback is approved again."""

from __future__ import annotations

import pytest

from reconcile import services
from reconcile.models import Finding, Reconciliation
from rollbacks.models import Rollback
from tests.browser.conftest import screenshot
from tests.reconcile import estate

pytestmark = pytest.mark.django_db(transaction=True)


def test_operator_works_the_findings_in_the_browser(
    page, live_server, target_server, make_system, alice
):
    import httpx

    base, _state = target_server
    for key in ("pay-1", "pay-2"):
        httpx.post(base + "/payments/capture", headers={"Idempotency-Key": f'"{key}"'})
    rollback = estate.gateway_rollback(make_system, alice, [estate.captures_check(base)])
    rec = Reconciliation.objects.get(rollback=rollback)
    services.run_reconciliation(reconciliation_id=rec.pk)
    first, second = Finding.objects.filter(reconciliation=rec).order_by("id")

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-alice")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/rollbacks/{rollback.pk}/")
    table = page.locator("#reconcile-findings")
    table.wait_for()  # loaded by htmx after the page
    assert page.locator("#reconciliation-link").count() == 0  # the stub was replaced
    assert "2 findings from 1 check" in page.locator("#reconciliation").inner_text()

    page.locator(f"#finding-{first.pk}-dismiss-summary").click()
    page.get_by_label(f"Why does finding #{first.pk} need no action?").fill("voided by hand")
    page.get_by_role("button", name=f"Dismiss finding #{first.pk}").click()
    page.locator(".message.success").wait_for()
    page.locator("#reconcile-findings").wait_for()
    page.get_by_label(f"#{second.pk}", exact=True).check()
    page.locator("#reconcile-followup-button").focus()
    page.keyboard.press("Enter")
    page.locator(".message.success").wait_for()
    assert "Stage 2 added" in page.locator(".messages").inner_text()
    page.locator("#start-button").wait_for()  # approved again: it may start
    page.locator(f"#finding-{second.pk} .finding-added").wait_for()  # the panel reloaded
    screenshot(page, "reconciliation-follow-up")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("dismissed", "added")
    assert Rollback.objects.get(pk=rollback.pk).state == Rollback.State.APPROVED
    assert page.csp_violations == []
