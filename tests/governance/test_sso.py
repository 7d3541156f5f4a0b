"""Single sign-on's edges without a browser (governance/sso.py); the flow itself runs in
Chromium against a real provider in tests/browser/test_sso.py."""

from __future__ import annotations

import socket

import pytest
from django.contrib.auth.models import Group

from governance import sso
from ledger.models import Entry
from tests.sso import configure

pytestmark = pytest.mark.django_db
MAP = {"ops": ["operator"], "payments": ["team:payments"], "approvers": ["approver"]}


@pytest.fixture
def configured(settings):
    with socket.socket() as sock:  # a port nobody listens on: the provider is down
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    configure(settings, dead, MAP)
    return settings


def test_groups_follow_the_provider_and_leave_unmapped_ones_alone(configured, alice):
    lent = Group.objects.get(name="team:platform")  # lent by an admin, not by the map
    alice.groups.add(lent)
    added, removed = sso.groups_apply(user=alice, claims={"groups": ["ops", "approvers", "x"]})
    assert (added, removed) == (["approver"], ["team:payments"])
    assert set(alice.groups.values_list("name", flat=True)) == {
        "operator",
        "approver",
        "team:platform",
    }
    entry = Entry.objects.filter(action="auth.sso_login").get()
    assert entry.payload["added"] == ["approver"] and entry.payload["removed"] == ["team:payments"]
    sso.groups_apply(user=alice, claims={"groups": "ops"})  # a single group as a string
    assert set(alice.groups.values_list("name", flat=True)) == {"operator", "team:platform"}


def test_the_callback_with_the_provider_down_is_a_clear_503(client, configured):
    session = client.session
    session["oidc_states"] = {"st": {"nonce": "n", "code_verifier": "v" * 64, "added_on": 0}}
    session.save()
    response = client.get("/oidc/callback/", {"code": "c", "state": "st"})
    assert response.status_code == 503
    assert b"The identity provider is not answering" in response.content


def test_a_callback_without_a_started_sign_in_is_refused_and_ledgered(client, configured):
    response = client.get("/oidc/callback/", {"code": "c", "state": "forged"})
    assert response.status_code == 400
    assert Entry.objects.filter(action="auth.sso_refused").count() == 1


def test_password_login_switched_off(client, configured, alice):
    configured.PASSWORD_LOGIN = False
    page = client.get("/login/").content.decode()
    assert "Log in with single sign-on" in page and 'name="password"' not in page
    refused = client.post("/login/", {"username": "alice", "password": "pw-alice"})
    assert refused.status_code == 403 and b"Password login is switched off" in refused.content
    assert "_auth_user_id" not in client.session


def test_without_sso_the_login_page_is_the_password_form_and_oidc_is_404(client):
    page = client.get("/login/").content.decode()
    assert 'name="password"' in page and "single sign-on" not in page
    assert client.get("/oidc/authenticate/").status_code == 404
