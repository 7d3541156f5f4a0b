"""Every demo user logs in through the real login page in Chromium."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from rollbacks.management.commands.seed_demo import DEMO_PASSWORD, DEMO_USERS
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo(transactional_db):
    call_command("seed_demo")


def _log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")  # the overview


def test_every_demo_user_can_log_in(page, live_server, demo):
    seen = {}
    for username in DEMO_USERS:
        _log_in(page, live_server.url, username)
        assert page.locator(".who").inner_text() == username
        page.get_by_role("link", name="Systems", exact=True).click()
        page.wait_for_url(f"{live_server.url}/systems/")
        seen[username] = page.locator("tbody tr").count()
        screenshot(page, f"systems-as-{username}")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{live_server.url}/login/")
    assert seen["alice"] == 7 and seen["carol"] == 7
    assert seen["mallory"] == 0
    assert page.csp_violations == []


def test_dependency_map_is_drawn(page, live_server, demo):
    _log_in(page, live_server.url, "alice")
    page.get_by_role("link", name="Systems", exact=True).click()
    page.wait_for_url(f"{live_server.url}/systems/")
    svg = page.locator("figure.dependency-map svg")
    assert svg.is_visible()
    assert svg.locator("g.node").count() == 7
    assert (
        svg.locator("line.edge-before").count() == 5
        and svg.locator("line.edge-tandem").count() == 1
    )
    # Stage order: flags is left of orders-api, which is left of orders-db.
    xs = {
        name: svg.locator("g.node", has_text=name).bounding_box()["x"]
        for name in ("flags", "orders-api", "orders-db")
    }
    assert xs["flags"] < xs["orders-api"] < xs["orders-db"]
    screenshot(page, "dependency-map")


def test_wrong_password_shows_an_error(page, live_server, demo):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").is_visible()
    assert page.url.endswith("/login/")


def test_keyboard_alone_logs_in_with_visible_focus(page, live_server, demo):
    page.goto(f"{live_server.url}/login/")
    # The username field has focus on arrival, with a visible focus ring.
    assert page.evaluate("document.activeElement.name") == "username"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") not in (
        "",
        "none",
    )
    # From the top of the page, the first Tab stop is the skip link.
    first_stop = "document.querySelector('a[href], button, input:not([type=hidden])').textContent"
    assert page.evaluate(first_stop) == "Skip to content"
    page.get_by_label("Username").focus()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.name") == "password"
    page.keyboard.type("unwind-demo")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")  # the overview
