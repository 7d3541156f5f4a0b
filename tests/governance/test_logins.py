"""Login throttling (django-axes): per account and per address, a clear refusal, and every
failed login and lockout in the ledger (issue 16, finding 2: 100 wrong passwords at 2/s,
then the right one, logged in, and nothing was recorded)."""

from __future__ import annotations

import pytest

from ledger.models import Entry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()  # where the lockouts already ledgered are remembered


def _login(client, username, password, address="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def _is_logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/"


def test_the_right_password_after_too_many_wrong_ones_is_refused(client, alice, settings):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _login(client, "alice", "wrong").status_code == 200  # the form, with its error
    locked = _login(client, "alice", "wrong")
    assert locked.status_code == 429
    text = locked.content.decode()
    assert "Too many failed logins" in text and "0:15:00" in text
    response = _login(client, "alice", "pw-alice")
    assert response.status_code == 429 and not _is_logged_in(response)
    # From another address too: the account itself is locked.
    assert _login(client, "alice", "pw-alice", address="10.9.9.9").status_code == 429


def test_one_address_trying_many_accounts_is_locked_out(client, alice, bob, settings):
    for i in range(settings.AXES_FAILURE_LIMIT):
        _login(client, f"guess-{i}", "wrong", address="10.0.0.66")
    assert _login(client, "bob", "pw-bob", address="10.0.0.66").status_code == 429
    assert _is_logged_in(_login(client, "bob", "pw-bob", address="10.0.0.7"))


def test_failed_logins_and_the_lockout_are_ledgered_once_each(client, alice, settings):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit + 20):  # the 20 after the lockout are not ledgered one by one
        _login(client, "alice", "wrong")
    failed = Entry.objects.filter(action="auth.login_failed")
    assert failed.count() == limit - 1  # the failure that locks out is the lockout entry
    assert {e.payload["username"] for e in failed} == {"alice"}
    assert {e.payload["address"] for e in failed} == {"10.0.0.1"}
    assert all(e.outcome == "refused" for e in failed)
    [locked] = Entry.objects.filter(action="auth.locked_out")
    assert locked.subject_id == "alice" and locked.payload["address"] == "10.0.0.1"


def test_a_success_resets_the_count(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "alice", "wrong")
    assert _is_logged_in(_login(client, "alice", "pw-alice"))
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "alice", "wrong")
    assert _is_logged_in(_login(client, "alice", "pw-alice"))
