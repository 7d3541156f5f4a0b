"""The estate in Django admin: a cycle or a broken contract is refused and nothing is saved;
publishing makes a new version and never changes an old one."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from ledger.models import Entry
from rollbacks import services
from rollbacks.models import Contract, DependencyEdge, DependencyMap

pytestmark = pytest.mark.django_db


def _map_post(edges: list[tuple[str, int, int]], note: str = "", based_on=None) -> dict:
    """The add form as posted; ``based_on``: the version it was opened on (the newest)."""
    if based_on is None:
        latest = DependencyMap.objects.latest_published()
        based_on = latest.version if latest else 0
    data = {
        "note": note,
        "based_on": str(based_on),
        "edges-TOTAL_FORMS": str(len(edges)),
        "edges-INITIAL_FORMS": "0",
        "edges-MIN_NUM_FORMS": "0",
        "edges-MAX_NUM_FORMS": "1000",
    }
    for i, (kind, first, second) in enumerate(edges):
        data |= {
            f"edges-{i}-kind": kind,
            f"edges-{i}-first": str(first),
            f"edges-{i}-second": str(second),
        }
    return data


@pytest.fixture
def abc(make_system):
    return make_system("svc-a"), make_system("svc-b"), make_system("svc-c")


def test_cyclic_dependency_map_is_refused_naming_the_cycle(client, dave, abc):
    a, b, c = abc
    client.force_login(dave)
    edges = [("before", a.pk, b.pk), ("before", b.pk, c.pk), ("before", c.pk, a.pk)]
    response = client.post(reverse("admin:rollbacks_dependencymap_add"), _map_post(edges))
    assert response.status_code == 200  # the form again, with the error
    text = response.content.decode()
    assert "The dependency map has a cycle: svc-a → svc-b → svc-c → svc-a" in text
    assert DependencyMap.objects.count() == 0
    assert DependencyEdge.objects.count() == 0
    assert not Entry.objects.filter(action="estate.map.published").exists()


def test_tandem_contradicting_an_edge_is_refused(client, dave, abc):
    a, b, _ = abc
    client.force_login(dave)
    edges = [("before", a.pk, b.pk), ("tandem", b.pk, a.pk)]
    response = client.post(reverse("admin:rollbacks_dependencymap_add"), _map_post(edges))
    assert "has a cycle: svc-a → svc-b = svc-a" in response.content.decode()
    assert DependencyMap.objects.count() == 0


def test_publishing_a_map_makes_a_new_version_and_keeps_the_old(client, dave, abc):
    a, b, c = abc
    client.force_login(dave)
    url = reverse("admin:rollbacks_dependencymap_add")
    response = client.post(url, _map_post([("before", a.pk, b.pk)], "first"))
    assert response.status_code == 302, response.content.decode()[:2000]
    # The add form for the next version is pre-filled from the newest one.
    form_page = client.get(url).content.decode()
    assert 'name="edges-0-first"' in form_page and f'value="{a.pk}" selected' in form_page
    response = client.post(
        url, _map_post([("before", a.pk, b.pk), ("tandem", b.pk, c.pk)], "second")
    )
    assert response.status_code == 302
    v1, v2 = DependencyMap.objects.order_by("version")
    assert (v1.version, v2.version) == (1, 2)
    assert list(v1.edges.values_list("kind", "first__slug", "second__slug")) == [
        ("before", "svc-a", "svc-b")
    ]
    assert v2.edges.count() == 2
    assert Entry.objects.filter(action="estate.map.published").count() == 2
    # A published version cannot be changed or deleted through the admin.
    change = client.post(
        reverse("admin:rollbacks_dependencymap_change", args=[v1.pk]), _map_post([])
    )
    assert change.status_code == 403
    assert v1.edges.count() == 1


VALID_ACTIONS = {
    "create_order": {
        "compensation": {
            "kind": "http",
            "method": "POST",
            "url": "http://127.0.0.1:9/orders/{params.id}/cancel",
        },
        "attempts": 3,
        "backoff": {"initial_s": 1, "max_s": 10},
    }
}


def test_broken_contract_is_refused_naming_the_field(client, dave, abc):
    a, _, _ = abc
    client.force_login(dave)
    broken = json.loads(json.dumps(VALID_ACTIONS))
    broken["create_order"]["backoff"]["max_s"] = 0.5
    response = client.post(
        reverse("admin:rollbacks_contract_add"),
        {"system": a.pk, "note": "", "actions": json.dumps(broken), "based_on": "0"},
    )
    assert response.status_code == 200
    assert (
        "actions.create_order.backoff.max_s: must be at least initial_s (1)"
        in response.content.decode()
    )
    assert Contract.objects.count() == 0
    assert not Entry.objects.filter(action="estate.contract.published").exists()


def test_contract_with_unknown_template_field_is_refused(client, dave, abc):
    a, _, _ = abc
    client.force_login(dave)
    broken = json.loads(json.dumps(VALID_ACTIONS))
    broken["create_order"]["compensation"]["url"] = "http://x/{rollback.colour}"
    response = client.post(
        reverse("admin:rollbacks_contract_add"), {"system": a.pk, "actions": json.dumps(broken)}
    )
    assert (
        "actions.create_order.compensation.url: template names {rollback.colour}"
        in response.content.decode()
    )
    assert Contract.objects.count() == 0


def test_publishing_a_contract_never_changes_the_old_version(client, dave, abc):
    a, _, _ = abc
    client.force_login(dave)
    url = reverse("admin:rollbacks_contract_add")
    first = {"system": a.pk, "actions": json.dumps(VALID_ACTIONS), "based_on": "0"}
    assert client.post(url, first).status_code == 302
    prefilled = client.get(url + f"?system={a.pk}").content.decode()
    assert "create_order" in prefilled
    assert 'name="based_on" value="1"' in prefilled
    changed = json.loads(json.dumps(VALID_ACTIONS))
    changed["create_order"]["attempts"] = 7
    second = {"system": a.pk, "actions": json.dumps(changed), "based_on": "1"}
    assert client.post(url, second).status_code == 302
    v1, v2 = Contract.objects.filter(system=a).order_by("version")
    assert v1.actions == VALID_ACTIONS and v2.actions["create_order"]["attempts"] == 7
    assert (v1.version, v2.version) == (1, 2)
    assert (
        client.post(
            reverse("admin:rollbacks_contract_change", args=[v1.pk]),
            {"system": a.pk, "actions": json.dumps(changed)},
        ).status_code
        == 403
    )
    v1.refresh_from_db()
    assert v1.actions == VALID_ACTIONS


def test_operators_cannot_reach_the_admin(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:rollbacks_contract_add"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_map_form_opened_before_another_publish_is_refused(client, dave, abc):
    """Publishing from a stale form would silently undo the version published meanwhile."""
    a, b, c = abc
    client.force_login(dave)
    url = reverse("admin:rollbacks_dependencymap_add")
    assert client.post(url, _map_post([("before", a.pk, b.pk)], "v1")).status_code == 302
    assert 'name="based_on" value="1"' in client.get(url).content.decode()
    # Someone else publishes v2 (here through the service, as an estate import does).
    services.dependency_map_publish(
        edges=[("before", "svc-a", "svc-b"), ("before", "svc-b", "svc-c")], actor="import"
    )
    stale = client.post(url, _map_post([("before", a.pk, c.pk)], "from v1", based_on=1))
    assert stale.status_code == 200
    text = stale.content.decode()
    assert "Dependency map version 2 was published by an import or the API at" in text
    assert "after this form was opened from version 1" in text
    assert DependencyMap.objects.count() == 2
    fresh = client.post(url, _map_post([("before", a.pk, c.pk)], "from v2", based_on=2))
    assert fresh.status_code == 302 and DependencyMap.objects.count() == 3


def test_a_contract_form_opened_before_another_publish_is_refused(client, dave, abc):
    a, _, _ = abc
    client.force_login(dave)
    url = reverse("admin:rollbacks_contract_add")
    post = {"system": a.pk, "actions": json.dumps(VALID_ACTIONS), "based_on": "0"}
    assert client.post(url, post).status_code == 302
    # A second form opened with no version (plain "Add"): v1 exists, so it is refused.
    again = client.post(url, post)
    assert again.status_code == 200
    assert (
        f"svc-a&#x27;s contract version 1 was published by {dave.username} at"
        in again.content.decode()
    )
    assert "after this form was opened from no version" in again.content.decode()
    assert Contract.objects.filter(system=a).count() == 1
