"""Publishing from several connections at once never gives two versions the same number."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from ledger.models import Entry
from rollbacks import services
from rollbacks.models import Contract, DependencyMap

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ACTIONS = {"noop": {"compensation": {"kind": "simulated"}}}


def at_once(publish, n: int = 8) -> list[BaseException]:
    """Call ``publish(i)`` from ``n`` threads released together, each on its own connection;
    the exceptions they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait()
            publish(i)
        except BaseException as exc:  # collected and returned
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


def test_concurrent_contract_publishing_gives_distinct_versions(make_system):
    system = make_system("orders-db", kind="database")
    errors = at_once(
        lambda i: services.contract_publish(
            system=system, actions=ACTIONS | {f"a{i}": ACTIONS["noop"]}, actor="test"
        )
    )
    assert errors == []
    assert sorted(Contract.objects.filter(system=system).values_list("version", flat=True)) == list(
        range(1, 9)
    )


def test_concurrent_map_publishing_gives_distinct_versions(make_system):
    """The map has no owner row to lock: its publishers take one lock of their own."""
    for slug in ("a", "b", "c"):
        make_system(slug)
    errors = at_once(
        lambda i: services.dependency_map_publish(
            edges=[("before", "a", "b")] + ([("tandem", "b", "c")] if i % 2 else []),
            actor="test",
            note=f"publisher {i}",
        )
    )
    assert errors == []
    assert sorted(DependencyMap.objects.values_list("version", flat=True)) == list(range(1, 9))
    assert Entry.objects.filter(action="estate.map.published").count() == 8
