"""Temporary incident grants: a team's systems and rollbacks for a while, then nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from governance import services
from governance.models import IncidentGrant
from ledger.models import Entry
from rollbacks.models import System

pytestmark = pytest.mark.django_db


def test_incident_grant_lends_a_team_until_it_expires(make_system, mallory, dave):
    make_system("orders-db", kind="database")
    assert not System.objects.visible_to(mallory).exists()
    grant = services.incident_grant(
        user=mallory,
        team_group=Group.objects.get(name="team:payments"),
        actor=dave,
        reason="INC-42: helping payments",
        hours=2,
    )
    assert list(System.objects.visible_to(mallory).values_list("slug", flat=True)) == ["orders-db"]
    assert Entry.objects.filter(action="grant.created").exists()
    IncidentGrant.objects.filter(pk=grant.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert not System.objects.visible_to(mallory).exists()  # lapsed by itself, nothing to clean up


def test_only_admins_grant_and_grants_are_bounded(alice, mallory, dave):
    payments = Group.objects.get(name="team:payments")
    with pytest.raises(PermissionDenied):
        services.incident_grant(user=mallory, team_group=payments, actor=alice, reason="x", hours=1)
    with pytest.raises(services.EngineError):
        services.incident_grant(
            user=mallory, team_group=payments, actor=dave, reason="x", hours=100
        )
    assert IncidentGrant.objects.count() == 0
