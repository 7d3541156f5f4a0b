"""In Chromium, an open rollback page receives a new timeline item without a reload: an
event POSTed to /api/v1/events appears in the timeline, by the one-second cursor poll
(WSGI live server) and by server-sent events (uvicorn, as `make run` serves the app)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from rollbacks import engine
from rollbacks.management.commands.seed_demo import DEMO_PASSWORD
from rollbacks.models import ProcessRun
from rollbacks.tokens import token_create
from tests.browser.conftest import screenshot
from tests.conftest import database_url_for_subprocess, stop_process

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(180),
    pytest.mark.django_db(transaction=True),
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def planned(transactional_db, tmp_path, monkeypatch):
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    call_command("seed_demo")
    alice = get_user_model().objects.get(username="alice")
    rollback = engine.rollback_plan(run=ProcessRun.objects.get(), actor=alice, reason="browser")
    return rollback, token_create(user=alice, name="ci")[1]


@pytest.fixture
def uvicorn_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"DATABASE_URL": database_url_for_subprocess(), "DEBUG": "1"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log = tmp_path / "uvicorn.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",  # the page's open stream must not hold it 15 s
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail("uvicorn did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def _log_in(page, base):
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")


def _an_event_appears_without_reload(page, base, rollback, token, mode, name):
    _log_in(page, base)
    page.goto(f"{base}/rollbacks/{rollback.pk}/")
    marker = "#timeline-live" if mode == "sse" else "#timeline-poll"
    assert page.locator(marker).count() == 1, f"the page should follow the timeline by {mode}"
    assert page.get_by_text("rollback.planned").first.is_visible()
    page.evaluate("() => { window.__not_reloaded = true; }")
    time.sleep(1)  # the stream is open / the poll has run once
    title = f"orders-api 3.1.4 deployed ({mode})"
    answer = httpx.post(
        f"{base}/api/v1/events",
        json={
            "kind": "deploy",
            "source": "ci",
            "title": title,
            "rollback": rollback.pk,
            "system": "orders-api",
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    posted = time.monotonic()
    item = page.locator("#timeline-items .tl-item", has_text=title)
    item.wait_for(state="visible", timeout=5000)
    assert time.monotonic() - posted < 3
    assert page.evaluate("() => window.__not_reloaded === true")  # no reload happened
    assert page.locator("#timeline-items .tl-item").first.inner_text().count(title) == 1
    item.scroll_into_view_if_needed()
    screenshot(page, name)
    assert page.csp_violations == []


def test_a_posted_event_reaches_an_open_page_by_polling(page, live_server, planned):
    rollback, token = planned
    _an_event_appears_without_reload(
        page, live_server.url, rollback, token, "poll", "timeline-live-poll"
    )


def test_a_posted_event_reaches_an_open_page_by_server_sent_events(page, uvicorn_url, planned):
    rollback, token = planned
    _an_event_appears_without_reload(page, uvicorn_url, rollback, token, "sse", "timeline-live-sse")
