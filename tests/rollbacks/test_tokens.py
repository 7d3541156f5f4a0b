"""Service-account tokens: created once and stored hashed, authenticated, revoked; the
create_service_token command and the token admin."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from ledger.models import Entry
from rollbacks.models import ApiToken
from rollbacks.tokens import token_authenticate, token_create, token_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(django_user_model, teams):
    user = django_user_model.objects.create_user(username="ci-orders")
    user.groups.set([Group.objects.get_or_create(name="operator")[0], teams["payments"].group])
    return user


def test_token_is_shown_once_and_only_its_sha256_and_prefix_are_stored(service, dave):
    token, raw = token_create(user=service, name="orders pipeline", actor=dave)
    assert raw.startswith("unw_") and len(raw) > 40
    token.refresh_from_db()
    assert token.token_sha256 == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:8]
    stored = [str(v) for v in ApiToken.objects.values_list().get(pk=token.pk)]
    assert raw not in stored
    entry = Entry.objects.get(action="token.created")
    assert entry.actor == "user:dave" and entry.subject_id == str(token.pk)
    assert raw not in str(entry.payload) and token.token_sha256 not in str(entry.payload)


def test_two_tokens_are_different(service):
    _, first = token_create(user=service, name="a")
    _, second = token_create(user=service, name="b")
    assert first != second


def test_a_token_needs_a_name_and_nothing_is_written_without_one(service):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as exc:
        token_create(user=service, name="  ")
    assert "name" in exc.value.message_dict
    assert ApiToken.objects.count() == 0 and not Entry.objects.filter(action="token.created")


def test_authenticate_returns_the_user_of_a_live_token_only(service):
    token, raw = token_create(user=service, name="ci")
    assert token_authenticate(raw) == service
    assert token_authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert token_authenticate("") is None and token_authenticate(None) is None
    assert token_authenticate("unw_" + "x" * 500) is None
    assert token_authenticate(token.token_sha256) is None  # the stored hash is not a token


def test_revoked_token_and_inactive_user_are_refused(service, dave):
    token, raw = token_create(user=service, name="ci")
    assert token_revoke(token=token, actor=dave) is True
    assert token_authenticate(raw) is None
    assert token_revoke(token=token, actor=dave) is False  # twice: nothing new
    assert Entry.objects.filter(action="token.revoked").count() == 1

    _, other = token_create(user=service, name="ci 2")
    service.is_active = False
    service.save()
    assert token_authenticate(other) is None


def test_last_used_is_written_at_most_once_a_minute(service, django_assert_num_queries):
    token, raw = token_create(user=service, name="ci")
    assert token_authenticate(raw) == service
    token.refresh_from_db()
    first_use = token.last_used_at
    assert first_use is not None
    with django_assert_num_queries(1):  # the lookup only: no write within the minute
        token_authenticate(raw)
    token.refresh_from_db()
    assert token.last_used_at == first_use

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first_use - timedelta(minutes=2))
    token_authenticate(raw)
    token.refresh_from_db()
    assert token.last_used_at > first_use - timedelta(seconds=1)
    assert timezone.now() - token.last_used_at < timedelta(seconds=30)


# --------------------------------------------------------------------------- the command


def _command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_service_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_command_creates_a_service_account_with_role_and_teams_and_prints_the_token(teams):
    raw, err = _command(
        "ci-orders", "--name", "orders", "--create-user", "--role", "operator",
        "--team", "payments", "platform",
    )  # fmt: skip
    assert re.fullmatch(r"unw_[A-Za-z0-9_-]{40,}", raw)
    user = token_authenticate(raw)
    assert user.username == "ci-orders" and not user.has_usable_password()
    assert set(user.groups.values_list("name", flat=True)) == {
        "operator",
        "team:payments",
        "team:platform",
    }
    assert "shown once" in err and raw not in err
    assert Entry.objects.filter(action="account.created", subject_id=str(user.pk)).exists()
    assert Entry.objects.get(action="token.created").actor == "manage.py create_service_token"


def test_command_adds_a_token_to_an_existing_user(service):
    raw, _ = _command("ci-orders", "--name", "second")
    assert token_authenticate(raw) == service
    assert service.api_tokens.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ghost", "--name", "x"], "no user 'ghost': pass --create-user"),
        (["ghost", "--name", "x", "--create-user", "--role", "wizard"], "unknown role wizard"),
        (["ghost", "--name", "x", "--create-user", "--team", "nope"], "unknown team nope"),
        (["ghost", "--name", " ", "--create-user"], "give the token a name"),
    ],
)
def test_command_refuses_unknown_user_role_or_team_and_writes_nothing(teams, args, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        _command(*args)
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username="ghost").exists()
    assert ApiToken.objects.count() == 0


# --------------------------------------------------------------------------- the admin


def test_admin_adds_a_token_and_shows_it_once(client, dave, service):
    client.force_login(dave)
    response = client.post(
        reverse("admin:rollbacks_apitoken_add"),
        {"user": service.pk, "name": "orders pipeline"},
        follow=True,
    )
    assert response.status_code == 200
    token = ApiToken.objects.get()
    shown = [str(m) for m in response.context["messages"]]
    raw = re.search(r"<code>(unw_[^<]+)</code>", " ".join(shown)).group(1)
    assert token_authenticate(raw) == service
    assert token.token_sha256 == hashlib.sha256(raw.encode()).hexdigest()
    assert Entry.objects.get(action="token.created").actor == "user:dave"
    # Shown once: the changelist and the token's page do not show it again.
    for url in (
        reverse("admin:rollbacks_apitoken_changelist"),
        reverse("admin:rollbacks_apitoken_change", args=[token.pk]),
    ):
        page = client.get(url).content.decode()
        assert raw not in page and token.prefix in page


def test_admin_token_page_shows_hash_and_prefix_read_only(client, dave, service):
    token, _ = token_create(user=service, name="ci")
    client.force_login(dave)
    url = reverse("admin:rollbacks_apitoken_change", args=[token.pk])
    client.post(url, {"name": "renamed", "token_sha256": "0" * 64, "prefix": "hacked"})
    token.refresh_from_db()
    assert token.name == "renamed"
    assert token.prefix != "hacked" and token.token_sha256 != "0" * 64
    assert Entry.objects.filter(action="token.changed").exists()


def test_admin_revoke_action_revokes_selected_tokens(client, dave, service):
    keep, keep_raw = token_create(user=service, name="keep")
    drop, drop_raw = token_create(user=service, name="drop")
    client.force_login(dave)
    response = client.post(
        reverse("admin:rollbacks_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [drop.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    assert token_authenticate(drop_raw) is None and token_authenticate(keep_raw) == service
    assert Entry.objects.filter(action="token.revoked", subject_id=str(drop.pk)).count() == 1


def test_admin_cannot_delete_tokens(client, dave, service):
    token, _ = token_create(user=service, name="ci")
    client.force_login(dave)
    response = client.get(reverse("admin:rollbacks_apitoken_delete", args=[token.pk]))
    assert response.status_code == 403
