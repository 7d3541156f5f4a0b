"""Login, the systems page and the dependency map picture, as each member of the cast."""

from __future__ import annotations

import pytest
from django.urls import reverse

from rollbacks import services
from rollbacks.models import DependencyEdge

pytestmark = pytest.mark.django_db


@pytest.fixture
def estate(make_system, dave):
    db = make_system("orders-db", kind="database", tier=1)
    api = make_system("orders-api")
    flags = make_system("flags", team="platform", kind="feature_flag", tier=3)
    services.dependency_map_publish(
        edges=[
            (DependencyEdge.Kind.BEFORE, "orders-api", "orders-db"),
            (DependencyEdge.Kind.BEFORE, "flags", "orders-api"),
        ],
        actor=dave,
    )
    return db, api, flags


def test_login_page_renders_a_labelled_form(client):
    response = client.get(reverse("login"))
    text = response.content.decode()
    assert response.status_code == 200
    assert '<label for="id_username">Username</label>' in text
    assert '<label for="id_password">Password</label>' in text


def test_systems_page_requires_login(client):
    response = client.get(reverse("systems"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_login_with_a_wrong_password_is_refused(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_operator_sees_their_teams_systems_with_owner_tier_and_health(client, alice, estate):
    client.post(reverse("login"), {"username": "alice", "password": "pw-alice"})
    response = client.get(reverse("systems"))
    text = response.content.decode()
    assert response.status_code == 200
    assert "orders-db" in text and "orders-api" in text
    assert "flags" not in text  # platform's system: alice is only in payments
    assert "Payments" in text and "tier 1" in text and "unknown" in text


def test_auditor_sees_every_system_and_the_map_as_svg(client, carol, estate):
    client.force_login(carol)
    text = client.get(reverse("systems")).content.decode()
    assert all(slug in text for slug in ("orders-db", "orders-api", "flags"))
    assert "<svg" in text and "dependency map" in text.lower()
    assert "flags is unwound before orders-api" in text
    assert "orders-api is unwound before orders-db" in text


def test_outsider_sees_no_system(client, mallory, estate):
    client.force_login(mallory)
    text = client.get(reverse("systems")).content.decode()
    assert "orders-db" not in text and "<svg" not in text
    assert "You cannot see any systems yet" in text


def test_pages_send_a_strict_content_security_policy(client, alice):
    client.force_login(alice)
    policy = client.get(reverse("systems"))["Content-Security-Policy"]
    assert (
        "script-src 'self'" in policy
        and "unsafe-inline" not in policy
        and "unsafe-eval" not in policy
    )
    assert "frame-ancestors 'none'" in policy


def test_pages_have_no_inline_script(client, carol, estate):
    client.force_login(carol)
    for url in (reverse("login"), reverse("systems")):
        text = client.get(url).content.decode()
        for chunk in text.split("<script")[1:]:
            assert (
                chunk.split(">", 1)[0].strip().startswith("src=")
                or " src=" in chunk.split(">", 1)[0]
            )
