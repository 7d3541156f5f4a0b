"""An export is fetched again through a django-guardian object permission (``view_export``,
given to its creator) and the auditor or admin role, both needed."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from guardian.shortcuts import assign_perm, remove_perm

from ledger.models import Export

pytestmark = pytest.mark.django_db


def test_the_export_follows_its_object_permission(client, carol, mallory, ledger_rows):
    olga = type(carol).objects.create_user("olga", password="x")
    olga.groups.add(Group.objects.get(name="auditor"))
    client.force_login(carol)
    client.post(reverse("ledger-export-new"), {"format": "jsonl"})
    export = Export.objects.get()
    url = reverse("ledger-export", args=[export.pk])
    assert client.get(url).status_code == 200

    remove_perm("ledger.view_export", carol, export)
    assert client.get(url).status_code == 404  # even its creator, once the permission is gone

    assign_perm("ledger.view_export", olga, export)
    client.force_login(olga)
    assert client.get(url).status_code == 200
    assign_perm("ledger.view_export", mallory, export)  # the object permission without the role
    client.force_login(mallory)
    assert client.get(url).status_code == 404
