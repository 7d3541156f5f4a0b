"""Single sign-on in Chromium against a real OpenID Connect provider on loopback: the npm
package oidc-provider (OpenID Certified) run with Node (tests/sso/provider/). Covered:
login; provider groups → Unwind roles and teams; a group removed at the provider is gone
at the next login; an unknown user gets no role; a tampered ``state`` is refused; no token
is logged; a provider that is down gives a clear page."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth import get_user_model

from ledger.models import Entry
from tests.browser.conftest import screenshot
from tests.sso import CLIENT_ID, CLIENT_SECRET, configure

PROVIDER = Path(__file__).resolve().parents[1] / "sso" / "provider"
GROUP_MAP = {
    "unwind-operators": ["operator"],
    "unwind-approvers": ["approver"],
    "payments-oncall": ["team:payments"],
}

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def provider(live_server, settings, tmp_path):
    """oidc-provider on a free port, its one client redirecting to this live server.
    Yields a function that sets a login's provider groups (read at every login)."""
    if not (PROVIDER / "node_modules" / "oidc-provider").exists():
        pytest.skip(f"oidc-provider is not installed: (cd {PROVIDER} && npm ci)")
    users = tmp_path / "users.json"
    users.write_text("{}")
    port = _free_port()
    log = tmp_path / "provider.log"
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "PORT": str(port),
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "REDIRECT_URI": f"{live_server.url}/oidc/callback/",
        "USERS": str(users),
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["node", "provider.mjs"], cwd=PROVIDER, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    while "ready" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    configure(settings, f"http://127.0.0.1:{port}", GROUP_MAP)

    def set_groups(login: str, *groups: str) -> None:
        data = json.loads(users.read_text())
        data[login] = {"groups": list(groups)}
        users.write_text(json.dumps(data))

    yield set_groups
    proc.terminate()
    proc.wait(timeout=10)


def _sso_log_in(page, base: str, login: str) -> None:
    """From Unwind's login page through the provider's, back to the overview."""
    page.goto(f"{base}/login/")
    page.get_by_role("link", name="Log in with single sign-on").click()
    _through_provider(page, base, login)
    page.wait_for_url(f"{base}/")


def _through_provider(page, base: str, login: str) -> None:
    """The provider's login (any password) and consent pages, each only when it shows
    them (it skips them for a browser it knows)."""
    page.wait_for_load_state()
    if page.locator("input[name=login]").count():
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", "any password")
        with page.expect_navigation():
            page.locator("button[type=submit]").click()
    if not page.url.startswith(base) and page.locator("button[type=submit]").count():
        with page.expect_navigation():
            page.locator("button[type=submit]").click()  # consent: "Continue"


def _groups(username: str) -> set[str]:
    user = get_user_model().objects.get(username=username)
    return set(user.groups.values_list("name", flat=True))


@pytest.mark.tools("node")
def test_sso_login_maps_groups_at_every_login(
    page, browser, live_server, provider, make_system, caplog
):
    caplog.set_level(logging.DEBUG)
    make_system("orders-api", team="payments")
    make_system("ci-runners", team="platform")
    codes: list[str] = []
    page.on(
        "request",
        lambda r: (
            codes.extend(parse_qs(urlsplit(r.url).query).get("code", []))
            if "/oidc/callback/" in r.url
            else None
        ),
    )
    base = live_server.url

    provider("ann", "unwind-operators", "payments-oncall", "somebody-elses-group")
    _sso_log_in(page, base, "ann")
    assert page.locator(".who").inner_text() == "ann"
    assert _groups("ann") == {"operator", "team:payments"}
    page.get_by_role("link", name="Systems", exact=True).click()
    assert page.locator("tbody tr").count() == 1  # payments' system, not platform's
    screenshot(page, "sso-ann-operator")
    page.get_by_role("button", name="Log out").click()

    provider("ann", "payments-oncall")  # removed from unwind-operators at the provider
    _sso_log_in(page, base, "ann")
    assert _groups("ann") == {"team:payments"}
    entry = Entry.objects.filter(action="auth.sso_login").order_by("-id").first()
    assert entry.payload["removed"] == ["operator"] and entry.payload["added"] == []

    # An unknown user (a fresh browser: the provider still remembers ann in this one).
    context = browser.new_context()
    stranger = context.new_page()
    _sso_log_in(stranger, base, "zed")
    assert stranger.locator(".who").inner_text() == "zed"
    assert _groups("zed") == set()
    stranger.get_by_role("link", name="Systems", exact=True).click()
    assert stranger.locator("tbody tr").count() == 0
    context.close()

    # Tokens and codes never reach a log record.
    assert codes
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "eyJ" not in logged  # any JWT (the ID token)
    assert not any(code in logged for code in codes)
    assert page.csp_violations == []


@pytest.mark.tools("node")
def test_a_tampered_state_is_refused(page, live_server, provider):
    """The authorization request is sent again with its ``state`` altered (as a man in the
    middle would): the provider signs the user in and sends that state back, and Unwind,
    which never issued it to this session, refuses the callback."""
    provider("ann", "unwind-operators")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/auth?" in r.url else None)
    page.goto(f"{live_server.url}/login/")
    page.get_by_role("link", name="Log in with single sign-on").click()
    page.wait_for_load_state()
    parts = urlsplit(requested[0])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = query["state"][::-1]
    page.goto(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}")
    with page.expect_response("**/oidc/callback/**") as answer:
        _through_provider(page, live_server.url, "ann")
    assert answer.value.status == 400
    page.get_by_role("heading", name="The sign-in could not be verified").wait_for()
    screenshot(page, "sso-tampered-state")
    assert not get_user_model().objects.filter(username="ann").exists()
    refused = Entry.objects.get(action="auth.sso_refused")
    assert "state" in refused.reason


def test_a_provider_that_is_down_gives_a_clear_page(page, live_server, settings):
    configure(settings, f"http://127.0.0.1:{_free_port()}", GROUP_MAP)  # nobody listens there
    page.goto(f"{live_server.url}/login/")
    with page.expect_response("**/oidc/authenticate/**") as answer:
        page.get_by_role("link", name="Log in with single sign-on").click()
    assert answer.value.status == 503
    page.get_by_role("heading", name="The identity provider is not answering").wait_for()
    assert page.get_by_role("link", name="log in with its password").count() == 1
    screenshot(page, "sso-provider-down")
