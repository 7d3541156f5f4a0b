"""The responder's cockpit in Chromium (issue 15): the rollback page's first screen in each
state and for each role, a page that says when its server stops answering, and words and
tables a tired person reads right. The whole incident is tests/browser/test_incident.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model

from governance import notifications
from governance import services as governance
from rollbacks import engine
from rollbacks.models import ProcessRun, Rollback, Step
from tests.browser.cockpit import VIEWPORT, Person, seed_steady_demo
from tests.browser.conftest import screenshot
from tests.conftest import database_url_for_subprocess
from tests.rollbacks.engine_estate import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(240),
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
S = Step.State


@pytest.fixture
def demo(transactional_db, demo_targets, tmp_path, monkeypatch):
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    seed_steady_demo()


def _user(name):
    return get_user_model().objects.get(username=name)


def _plan(*, is_drill=False) -> Rollback:
    run = ProcessRun.objects.get(external_id="demo-1")
    return engine.rollback_plan(
        run=run, actor=_user("alice"), reason="checkout migration failed", is_drill=is_drill
    )


def _approve(rollback: Rollback) -> None:
    for name in ("bob", "erin"):
        governance.rollback_approve(
            rollback=rollback,
            approver=_user(name),
            comment="plan checked",
            attestations={"pii": "ids only"},
        )


def _on_first_screen(person: Person, locator) -> None:
    locator.wait_for(state="visible", timeout=15_000)
    assert person.page.evaluate("window.scrollY") == 0
    box = locator.bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], box


def _badge(page) -> str:
    return page.locator("#state-badge").inner_text()


# 1. The first screen --------------------------------------------------------------------------


def test_each_state_puts_its_one_control_on_the_first_screen_for_whoever_may_use_it(
    browser, live_server, demo
):
    base = live_server.url
    rollback = _plan()
    url = f"/rollbacks/{rollback.pk}/"
    bob, alice, carol = (Person(browser, base, n) for n in ("bob", "alice", "carol"))
    for person in (bob, alice, carol):
        person.log_in(url)

    # Awaiting approval: the approver's first screen is the approval panel with its
    # attestation; the requester and the auditor read what it waits for.
    assert _badge(bob.page) == "awaiting approval"
    assert bob.page.locator("#state-detail").inner_text() == "0 of 2 approvals received"
    screenshot(bob.page, "cockpit-1-approver-first-screen")
    _on_first_screen(bob, bob.page.locator("#approve-button"))
    _on_first_screen(bob, bob.page.locator("#attest-pii"))
    assert alice.page.locator("#approve-button").count() == 0
    assert "2 more approvals needed" in alice.page.locator("#action-needed").inner_text()

    # One approval: every open page says so by itself (no reload).
    governance.rollback_approve(
        rollback=rollback, approver=_user("bob"), comment="ok", attestations={"pii": "ids"}
    )
    alice.page.locator("#state-detail", has_text="1 of 2 approvals received").wait_for()

    # Approved: Start, for the operator only.
    governance.rollback_approve(
        rollback=rollback, approver=_user("erin"), comment="ok", attestations={"pii": "ids"}
    )
    _on_first_screen(alice, alice.page.locator("#start-button"))
    assert alice.page.locator("#state-detail").inner_text() == "ready to start"
    carol.page.locator("#state-badge", has_text="approved").wait_for()
    assert carol.page.locator("#start-button").count() == 0

    # Running, then halted on a failed step and on a manual step: no worker here, the
    # engine's states are set as a worker would leave them.
    alice.page.get_by_role("button", name="Start rollback").click()  # htmx: the fragment
    alice.page.locator("#state-badge", has_text="running").wait_for()
    assert "Rollback #" in alice.page.locator("#action-result").inner_text()
    failed = Step.objects.filter(rollback=rollback, is_manual=False).order_by("pk").first()
    Step.objects.filter(pk=failed.pk).update(state=S.FAILED, last_error="HTTP 503 from flags")
    page = alice.page
    page.locator("#state-badge", has_text="halted").wait_for()
    assert (
        f"step {failed.pk} failed and waits for you" in page.locator("#state-detail").inner_text()
    )
    _on_first_screen(alice, page.get_by_role("button", name=f"Retry step {failed.pk}"))
    _on_first_screen(alice, page.locator(f"#step-{failed.pk}-skip-summary"))
    assert "HTTP 503 from flags" in page.locator("#action-needed").inner_text()
    carol.page.locator("#state-badge", has_text="halted").wait_for()
    assert (
        f"step {failed.pk} failed and waits for an operator"
        in carol.page.locator("#state-detail").inner_text()
    )
    assert carol.page.get_by_role("button", name=re.compile("^Retry")).count() == 0
    screenshot(page, "cockpit-2-operator-halted-on-a-failure")

    Step.objects.filter(pk=failed.pk).update(state=S.SUCCEEDED, last_error="")
    manual = Step.objects.get(rollback=rollback, is_manual=True)
    Step.objects.filter(pk=manual.pk).update(state=S.WAITING_HUMAN)
    page.locator("#state-detail", has_text=f"step {manual.pk} waits for you").wait_for()
    _on_first_screen(alice, page.get_by_label(f"What was done by hand for step {manual.pk}?"))
    _on_first_screen(alice, page.get_by_role("button", name=f"Resolve step {manual.pk}"))
    assert "Do by hand:" in page.locator(f"#step-{manual.pk}-needs").inner_text()
    screenshot(page, "cockpit-3-operator-halted-on-a-manual-step")

    # Then the plan picture in words, and one table row per step.
    picture = page.locator(".plan-picture svg").inner_html()
    assert "needs a human" in picture and "waitinghuman" not in picture
    rows = page.locator("table.steps-table tbody tr.step")
    assert rows.count() == Step.objects.filter(rollback=rollback).count()
    assert (
        page.locator("#plan-title").bounding_box()["y"]
        > page.locator("#action-needed").bounding_box()["y"]
    )
    for person in (bob, alice, carol):
        assert person.page.csp_violations == []
        person.close()


# 2. The overview leads with what needs action -------------------------------------------------


def test_the_overview_leads_with_what_needs_action_and_drops_what_was_resolved(
    browser, live_server, demo, settings
):
    settings.DASHBOARD_POLL_S = 1
    settings.ESCALATION_EMAILS = ["oncall@example.com"]
    alice = Person(browser, live_server.url, "alice")
    alice.log_in()
    page = alice.page
    needs = page.locator("#needs-action")
    run = ProcessRun.objects.get(external_id="demo-1")
    _on_first_screen(alice, page.get_by_role("button", name=f"Plan rollback of {run}"))
    assert (
        page.locator("#needs-action").bounding_box()["y"]
        < page.locator("#active-title").bounding_box()["y"]
    )

    # Plan from the overview (the reason is pre-filled from the run's failure).
    page.get_by_role("button", name=f"Plan rollback of {run}").click()
    page.wait_for_url(re.compile(r"/rollbacks/\d+/$"))
    rollback = Rollback.objects.get()
    page.goto(live_server.url + "/")
    assert page.locator(f"#failed-run-{run.pk}").count() == 0

    # Approved: Start is on the overview; started and halted on its manual step, the step
    # is listed; resolved, it leaves the list by itself.
    _approve(rollback)
    _on_first_screen(alice, page.locator(f"#start-{rollback.pk}-button"))
    engine.rollback_start(rollback=rollback, actor=_user("alice"))
    manual = Step.objects.get(rollback=rollback, is_manual=True)
    Step.objects.filter(pk=manual.pk).update(state=S.WAITING_HUMAN)
    page.locator(f"#waiting-step-link-{manual.pk}").wait_for()
    failed = Step.objects.filter(rollback=rollback, is_manual=False).first()
    Step.objects.filter(pk=failed.pk).update(state=S.FAILED, last_error="boom")
    page.locator(f"#failed-step-link-{failed.pk}").wait_for()
    # Escalated (beat's escalation round, once), both steps are listed under Escalations.
    notifications.escalate()
    escalated = {
        step: page.locator(f"#escalations-title ~ ul a[id*='step{step}{state}']")
        for step, state in ((manual.pk, S.WAITING_HUMAN), (failed.pk, S.FAILED))
    }
    for link in escalated.values():
        link.wait_for()
    screenshot(page, "cockpit-4-overview-needs-action")
    assert "Stages halted on a failure" in needs.inner_text()
    Step.objects.filter(pk__in=[manual.pk, failed.pk]).update(state=S.SUCCEEDED)
    page.locator(f"#waiting-step-link-{manual.pk}").wait_for(state="detached")
    page.locator(f"#failed-step-link-{failed.pk}").wait_for(state="detached")
    for link in escalated.values():  # their cause is resolved: they leave by themselves
        link.wait_for(state="detached")
    assert alice.page.csp_violations == []
    alice.close()


# 3. A live page whose server stops answering ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, log: Path) -> subprocess.Popen:
    """uvicorn, as `make run` serves the app, on this run's test database."""
    env = os.environ | {"DATABASE_URL": database_url_for_subprocess(), "DEBUG": "1"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1"]
            + ["--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def answers():
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/login/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 30, "uvicorn to answer")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """The server dies (SIGKILL: a graceful stop would wait for the open event stream)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def test_a_live_page_says_connection_lost_while_its_server_is_down_and_recovers(
    browser, demo, tmp_path
):
    rollback = _plan()
    port = _free_port()
    server = _serve(port, tmp_path / "uvicorn.log")
    alice = Person(browser, f"http://127.0.0.1:{port}", "alice")
    try:
        alice.log_in(f"/rollbacks/{rollback.pk}/")
        page = alice.page
        banner = page.locator("#connection-lost")
        assert banner.is_hidden() and page.get_by_text("Updates every second.").is_visible()

        _stop(server)  # the server this test started
        banner.wait_for(state="visible", timeout=10_000)
        assert "Connection lost, retrying" in banner.inner_text()
        assert page.get_by_text("Updates every second.").is_hidden()
        _on_first_screen(alice, banner)
        screenshot(page, "cockpit-5-connection-lost")

        server = _serve(port, tmp_path / "uvicorn.log")
        banner.wait_for(state="hidden", timeout=15_000)
        assert page.get_by_text("Updates every second.").is_visible()
        # And it is live again: a change made now reaches the page.
        _approve(rollback)
        page.locator("#state-badge", has_text="approved").wait_for(timeout=10_000)
    finally:
        alice.close()
        _stop(server)
