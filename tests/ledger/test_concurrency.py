"""Concurrent appends on PostgreSQL: 8 writers on different rollbacks (and the global chain,
and several on one rollback) still leave valid chains; a checkpoint taken meanwhile too."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection, transaction

from ledger.checkpoints import checkpoint_take
from ledger.models import Entry
from ledger.services import record
from ledger.verification import _shares, verify

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PER_WRITER = 25


def _run(targets: list, per_writer: int = PER_WRITER) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def writer(rollback_id):
        try:
            barrier.wait(timeout=30)
            for i in range(per_writer):
                with transaction.atomic():
                    record(
                        actor="worker",
                        action="step.attempt.succeeded",
                        rollback_id=rollback_id,
                        payload={"i": i},
                    )
                    if i % 10 == 0:
                        record(actor="worker", action="note", payload={"from": rollback_id})
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    close_old_connections()
    return errors


def _contiguous(chain: str) -> bool:
    seqs = list(Entry.objects.filter(chain=chain).order_by("id").values_list("seq", flat=True))
    return seqs == list(range(1, len(seqs) + 1))


def test_eight_writers_on_eight_rollbacks_leave_eight_valid_chains():
    assert _run(list(range(1, 9))) == []
    assert Entry.objects.count() == 8 * PER_WRITER + 8 * 3
    assert all(_contiguous(f"rollback:{r}") for r in range(1, 9)) and _contiguous("global")
    result = verify()
    assert result.is_ok, result.summary()
    assert result.chains == 9


def test_writers_sharing_one_rollback_are_serialised_into_one_chain():
    assert _run([5, 5, 5, 5]) == []
    assert _contiguous("rollback:5")
    assert Entry.objects.filter(chain="rollback:5").count() == 4 * PER_WRITER
    assert verify().is_ok


def test_a_checkpoint_taken_while_writers_append_verifies(settings):
    stop = threading.Event()
    taken = []

    def checkpointer():
        try:
            while not stop.is_set():
                checkpoint = checkpoint_take()
                if checkpoint:
                    taken.append(checkpoint.seq)
        finally:
            connection.close()

    thread = threading.Thread(target=checkpointer)
    thread.start()
    try:
        assert _run(list(range(1, 5))) == []
    finally:
        stop.set()
        thread.join(timeout=60)
    checkpoint_take()
    result = verify()
    assert result.is_ok, result.summary()
    assert result.checkpoints >= 2 and taken


def test_parallel_verification_shares_one_snapshot_and_finds_the_first_bad_entry():
    """Several connections fetch at once (a large ledger's path): same result as one."""
    from .conftest import as_superuser_around_triggers

    assert _run([1, 2, 3]) == []
    checkpoint_take()
    one, two = verify(workers=1), verify(workers=3)
    assert one.is_ok and two.is_ok
    assert (one.entries, one.chains, one.checkpoints) == (two.entries, two.chains, two.checkpoints)
    victims = [
        Entry.objects.get(chain="rollback:2", seq=5),
        Entry.objects.get(chain="rollback:3", seq=9),
    ]
    with transaction.atomic(), as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_entry SET reason = 'x' WHERE id = ANY(%s)", [[v.pk for v in victims]]
        )
    result = verify(workers=3)
    assert [p.id for p in result.problems] == sorted(v.pk for v in victims)
    assert result.first_problem.kind == "hash"
    with transaction.atomic(), as_superuser_around_triggers() as cursor:
        cursor.execute("DELETE FROM ledger_entry WHERE rollback_id = 1")
        cursor.execute("DELETE FROM ledger_chainhead WHERE chain = 'rollback:1'")
    kinds = {p.kind for p in verify(workers=2).problems}
    assert kinds == {"hash", "missing"}


def test_the_shares_of_a_parallel_verification_cover_every_row():
    """The connections split the chains into ranges by the chain heads; rows of chains
    that sort before or after every head, that have no head, or have no chain at all still
    fall in one of them (and are reported)."""
    from .conftest import as_superuser_around_triggers

    assert _run([1, 2, 3, 4, 5, 6]) == []
    clean = verify(workers=3)
    assert clean.is_ok and clean.entries == Entry.objects.count()
    shares = _shares("default", 3)
    assert len(shares) == 3 and shares[0][0] is None and shares[-1][1] is None
    for low, high in shares:  # each share holds some of the chains' entries
        rows = Entry.objects.all()
        rows = rows.filter(chain__gte=low) if low else rows
        rows = rows.filter(chain__lt=high) if high else rows
        assert rows.count() > clean.entries / 6, (low, high)
    template = Entry.objects.get(chain="rollback:3", seq=1)
    with transaction.atomic(), as_superuser_around_triggers() as cursor:
        cursor.execute("ALTER TABLE ledger_entry ALTER COLUMN chain DROP NOT NULL")
        for chain in ("aaa-first", "zzz-last", None):
            cursor.execute(
                "INSERT INTO ledger_entry (chain, seq, prev_hash, hash, at, actor, action, "
                "subject_type, subject_id, reason, outcome, trace_id, payload) "
                "SELECT %s, seq, prev_hash, hash, at, actor, action, subject_type, subject_id, "
                "reason, outcome, trace_id, payload FROM ledger_entry WHERE id = %s "
                "RETURNING id",
                [chain, template.pk],
            )
    ids = set(Entry.objects.order_by("-pk").values_list("pk", flat=True)[:3])
    for workers in (1, 2, 3, 4):
        result = verify(workers=workers)
        assert result.entries == clean.entries + 3, workers
        assert {p.id for p in result.problems if p.kind == "hash"} == ids, workers
        assert {p.chain for p in result.problems if p.kind == "head"} == {
            "aaa-first",
            "zzz-last",
            None,
        }, workers
