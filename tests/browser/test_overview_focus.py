"""In Chromium: the overview refreshes itself (htmx polling) without taking the keyboard
focus away from whoever is tabbing through it (docs/dashboard.md)."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from rollbacks.management.commands.seed_demo import DEMO_PASSWORD
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo(transactional_db, settings):
    call_command("seed_demo")
    settings.DASHBOARD_POLL_S = 1  # refresh every second, so the test sees several swaps


def _log_in(page, base: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")


def _focused(page) -> str:
    """The focused link's text when it is in the refreshed fragment; else what has the focus
    (BODY when the swap took it away)."""
    return page.evaluate(
        "document.activeElement.closest('#overview-live')"
        " ? document.activeElement.textContent.trim()"
        " : 'outside the overview: ' + document.activeElement.tagName"
    )


def _wait_for_refresh(page) -> None:
    """Until the fragment's "as of" time changes: htmx swapped a new one in."""
    before = page.locator("#overview-live time").first.get_attribute("datetime")
    page.wait_for_function(
        "(before) => document.querySelector('#overview-live time').getAttribute('datetime')"
        " !== before",
        arg=before,
        timeout=10_000,
    )


def test_tabbing_through_the_overview_keeps_focus_across_refreshes(page, live_server, demo):
    _log_in(page, live_server.url)
    assert page.locator("#overview-live").get_attribute("hx-trigger") == "every 1s"
    for _ in range(40):  # Tab, as a keyboard user does, to the third system's link
        page.keyboard.press("Tab")
        if _focused(page) == "events-queue":
            break
    else:
        pytest.fail(f"Tab never reached the events-queue link (focus: {_focused(page)})")

    for _ in range(2):
        _wait_for_refresh(page)
        assert _focused(page) == "events-queue"

    # And the next Tab goes on from there, not from the top of the page.
    links = page.evaluate(
        "[...document.querySelectorAll('#overview-live a')].map(a => a.textContent.trim())"
    )
    page.keyboard.press("Tab")
    assert _focused(page) == links[links.index("events-queue") + 1]
    screenshot(page, "overview-focus-after-refresh")
    assert page.csp_violations == []
