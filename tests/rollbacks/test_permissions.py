"""Object permissions with django-guardian (rollbacks/permissions.py): the owning teams'
groups hold them; visibility and every access check read them; a role is needed as well."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import get_groups_with_perms, remove_perm

from governance import services as governance
from governance.models import IncidentGrant
from ledger.models import Entry
from rollbacks import access, engine, runs, services
from rollbacks.models import (
    ProcessRun,
    Rollback,
    RollbackGroupObjectPermission,
    RollbackUserObjectPermission,
    System,
    SystemGroupObjectPermission,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def pat(django_user_model, teams):
    """An operator of the platform team."""
    user = django_user_model.objects.create_user(username="pat", password="pw-pat")
    user.groups.set([Group.objects.get_or_create(name=n)[0] for n in ("operator", "team:platform")])
    return user


@pytest.fixture
def planned(make_system, dave):
    """A run touching two payments systems and its rollback, planned by dave (who is in no
    team: alice sees it through her team's group only)."""
    for slug in ("orders-api", "orders-db"):
        services.contract_publish(
            system=make_system(slug),
            actor="test",
            actions={"undo": {"compensation": {"kind": "simulated", "latency_ms": 1}}},
        )
    run, _ = runs.run_register(process="checkout", external_id="r-1", actor="test")
    for slug in ("orders-api", "orders-db"):
        runs.action_report(
            run=run, system_slug=slug, action_type="undo", idempotency_key=slug, actor="test"
        )
    return engine.rollback_plan(run=run, actor=dave, reason="bad deploy")


def _group_codenames(obj) -> dict[str, set[str]]:
    return {
        group.name: set(perms)
        for group, perms in get_groups_with_perms(obj, attach_perms=True).items()
    }


def test_owning_teams_hold_the_object_permissions(planned, alice, dave):
    payments = {"team:payments"}
    system = System.objects.get(slug="orders-api")
    assert _group_codenames(system) == {"team:payments": {"view_system", "operate_system"}}
    assert set(_group_codenames(planned.run)) == payments
    assert _group_codenames(planned) == {
        "team:payments": {"view_rollback", "operate_rollback", "approve_rollback"}
    }
    # The requester may view it (and nothing else through that user permission).
    assert list(
        RollbackUserObjectPermission.objects.filter(content_object=planned).values_list(
            "user__username", "permission__codename"
        )
    ) == [("dave", "view_rollback")]


def test_a_removed_view_permission_hides_the_object(client, planned, alice, carol):
    payments = Group.objects.get(name="team:payments")
    client.force_login(alice)
    rollback_url = reverse("rollback", args=[planned.pk])
    run_url = reverse("run", args=[planned.run.pk])
    assert f'href="{rollback_url}"' in client.get(reverse("rollbacks")).content.decode()
    assert client.get(rollback_url).status_code == 200
    assert client.get(run_url).status_code == 200

    remove_perm("rollbacks.view_rollback", payments, planned)
    remove_perm("rollbacks.view_processrun", payments, planned.run)
    remove_perm("rollbacks.view_system", payments, System.objects.get(slug="orders-db"))

    assert client.get(rollback_url).status_code == 404
    assert client.get(run_url).status_code == 404
    assert f'href="{rollback_url}"' not in client.get(reverse("rollbacks")).content.decode()
    assert list(System.objects.visible_to(alice).values_list("slug", flat=True)) == ["orders-api"]
    assert not access.can_operate(alice, planned)  # operating what one cannot see: no
    client.force_login(carol)  # auditors read everything, whatever the object permissions
    assert client.get(rollback_url).status_code == 200


def test_operating_needs_the_role_and_the_object_permission(planned, alice, bob):
    payments = Group.objects.get(name="team:payments")
    assert access.can_operate(alice, planned)
    assert not access.can_operate(bob, planned)  # same team, approver role only
    remove_perm("rollbacks.operate_rollback", payments, planned)
    assert Rollback.objects.visible_to(alice).filter(pk=planned.pk).exists()  # still sees it
    assert not access.can_operate(alice, planned)
    with pytest.raises(PermissionDenied):
        engine.rollback_abort(rollback=planned, actor=alice, reason="not mine any more")
    assert Entry.objects.filter(action="rollback.abort", outcome="refused").exists()
    assert Rollback.objects.get(pk=planned.pk).state != Rollback.State.ABORTED


def test_changing_a_systems_team_moves_its_permissions(planned, alice, pat):
    system = System.objects.get(slug="orders-db")
    assert not System.objects.visible_to(pat).exists()
    assert not Rollback.objects.visible_to(pat).exists()

    system.team = system.team.__class__.objects.get(slug="platform")
    system.save()

    assert _group_codenames(system) == {"team:platform": {"view_system", "operate_system"}}
    assert list(System.objects.visible_to(pat).values_list("slug", flat=True)) == ["orders-db"]
    assert "orders-db" not in set(System.objects.visible_to(alice).values_list("slug", flat=True))
    # The run and rollback touching it are now the platform team's too; payments keeps them
    # through orders-api, which it still owns.
    assert set(_group_codenames(planned)) == {"team:payments", "team:platform"}
    assert set(_group_codenames(planned.run)) == {"team:payments", "team:platform"}
    assert access.can_operate(pat, planned)

    orders_api = System.objects.get(slug="orders-api")
    orders_api.team = system.team
    orders_api.save()
    assert set(_group_codenames(planned)) == {"team:platform"}
    assert not Rollback.objects.visible_to(alice).filter(pk=planned.pk).exists()
    assert not ProcessRun.objects.visible_to(alice).exists()


def test_the_estate_document_moves_permissions_too(make_system, pat):
    from rollbacks import estate

    make_system("cache")
    doc = estate.export_document()
    doc["systems"][0]["team"] = "platform"
    estate.import_document(doc, actor="test")
    assert list(System.objects.visible_to(pat).values_list("slug", flat=True)) == ["cache"]
    cache = System.objects.get(slug="cache")
    assert set(_group_codenames(cache)) == {"team:platform"}


def test_an_incident_grant_lends_the_teams_object_permissions_until_it_lapses(
    planned, mallory, dave
):
    mallory.groups.add(Group.objects.get(name="operator"))
    assert not access.can_operate(mallory, planned)
    grant = governance.incident_grant(
        user=mallory,
        team_group=Group.objects.get(name="team:payments"),
        actor=dave,
        reason="INC-7",
        hours=1,
    )
    assert access.can_operate(mallory, planned)
    assert Rollback.objects.visible_to(mallory).filter(pk=planned.pk).exists()
    IncidentGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(1))
    assert not access.can_operate(mallory, planned)
    assert not Rollback.objects.visible_to(mallory).exists()


def test_the_data_migration_grants_existing_objects(planned, alice):
    SystemGroupObjectPermission.objects.all().delete()
    RollbackGroupObjectPermission.objects.all().delete()
    planned.run.processrungroupobjectpermission_set.all().delete()
    assert not Rollback.objects.visible_to(alice).exists()
    migration = importlib.import_module("rollbacks.migrations.0004_grant_object_permissions")
    migration.forwards(apps, connection.schema_editor())
    assert Rollback.objects.visible_to(alice).filter(pk=planned.pk).exists()
    assert ProcessRun.objects.visible_to(alice).filter(pk=planned.run.pk).exists()
    assert System.objects.visible_to(alice).count() == 2
    assert access.can_operate(alice, planned)


def test_lists_cost_the_same_queries_however_many_rows(client, make_system, alice):
    services.contract_publish(
        system=make_system("orders-api"),
        actor="test",
        actions={"undo": {"compensation": {"kind": "simulated", "latency_ms": 1}}},
    )
    counts = {}
    for n in (1, 6):
        while Rollback.objects.count() < n:
            i = Rollback.objects.count()
            run, _ = runs.run_register(process="p", external_id=f"r{i}", actor="test")
            runs.action_report(
                run=run,
                system_slug="orders-api",
                action_type="undo",
                idempotency_key="k",
                actor="test",
            )
            engine.rollback_plan(run=run, actor=alice, reason="x")
        client.force_login(alice)
        for name in ("rollbacks", "runs", "systems"):
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(reverse(name)).status_code == 200
            counts.setdefault(name, []).append(len(ctx.captured_queries))
    assert all(a == b for a, b in counts.values()), counts
