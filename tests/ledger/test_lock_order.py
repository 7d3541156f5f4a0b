"""Transactions that append to several chains in opposite orders (real PostgreSQL, one
connection per thread): without a lock order they deadlock and PostgreSQL aborts one of
them, losing its change; ``record()`` never waits for a chain out of order, so none is
lost."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import close_old_connections, connection, transaction

from ledger.models import Entry
from ledger.services import chain_order_key, record
from ledger.verification import verify

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _crossed(orders: list[list[int | None]], *, rounds: int = 1) -> list[BaseException]:
    """One thread per order; each, in one transaction per round, appends to the first
    chain, waits until every thread holds its first chain, then appends to the others.
    With several rounds the threads meet before each transaction instead (a thread waiting
    inside one would hold its chain against the others' previous round) and give the
    others a moment to take their first chain."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(orders))

    def run(order):
        try:
            for i in range(rounds):
                if rounds > 1:
                    barrier.wait(timeout=30)
                with transaction.atomic():
                    record(actor="worker", action="cross.first", rollback_id=order[0])
                    if rounds == 1:
                        barrier.wait(timeout=30)
                    else:
                        time.sleep(0.05)
                    for rollback_id in order[1:]:
                        record(
                            actor="worker",
                            action="cross.next",
                            rollback_id=rollback_id,
                            payload={"round": i, "after": order[0]},
                        )
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    close_old_connections()
    return errors


def test_the_lock_order_puts_rollbacks_by_id_and_the_global_chain_last():
    keys = [chain_order_key(c) for c in ("rollback:2", "rollback:10", "global")]
    assert keys == sorted(keys)


def test_two_rollbacks_in_opposite_orders_neither_deadlocks_nor_loses_an_entry():
    assert _crossed([[1, 2], [2, 1]]) == []
    assert Entry.objects.count() == 4
    # [1, 2] waits for rollback 2 (in order); [2, 1] does not wait for rollback 1 (out of
    # order, busy): its rollback-1 entry joins rollback 2's chain, which it holds.
    crossed = Entry.objects.get(action="cross.next", rollback_id=1)
    assert (crossed.chain, crossed.payload["after"]) == ("rollback:2", 2)
    assert Entry.objects.get(action="cross.next", rollback_id=2).chain == "rollback:2"
    result = verify()
    assert result.is_ok, result.summary()


def test_a_rollback_and_the_global_chain_in_opposite_orders():
    assert _crossed([[1, None], [None, 1]]) == []
    assert Entry.objects.count() == 4
    assert verify().is_ok


def test_many_crossed_transactions_lose_nothing_and_every_chain_verifies():
    # Each thread's first chain is its own (the barrier waits until all hold theirs).
    orders = [[1, 2, None], [2, None, 1], [None, 2, 1], [3, 1, None]]
    rounds = 10
    assert _crossed(orders, rounds=rounds) == []
    assert Entry.objects.count() == len(orders) * rounds * 3
    for order in orders:
        assert Entry.objects.filter(action="cross.first", rollback_id=order[0]).count() == rounds
    # Every entry names its rollback, whichever chain took it; every chain is contiguous.
    assert Entry.objects.filter(action="cross.next", payload__round=0).count() == 8
    for chain in Entry.objects.values_list("chain", flat=True).distinct():
        seqs = list(Entry.objects.filter(chain=chain).order_by("id").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
    result = verify()
    assert result.is_ok, result.summary()


def test_an_uncontended_append_is_still_two_round_trips_in_or_out_of_order():
    from django.test.utils import CaptureQueriesContext

    for rollback_id in (1, 2, None):  # the chains exist
        with transaction.atomic():
            record(actor="worker", action="setup", rollback_id=rollback_id)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        record(actor="worker", action="a", rollback_id=2)
        record(actor="worker", action="b", rollback_id=None)  # in order
        record(actor="worker", action="c", rollback_id=1)  # out of order, but free
    assert len(queries) == 6, [q["sql"][:60] for q in queries]
    assert Entry.objects.get(action="c").chain == "rollback:1"
