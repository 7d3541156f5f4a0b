"""Edits made around the triggers by a superuser (``session_replication_role = replica``)
are detected by verification, which names the first bad entry: chain, seq, id and what."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from ledger import signing
from ledger.checkpoints import checkpoint_take
from ledger.models import Entry, Verification
from ledger.verification import verify as verify_in_database

from .conftest import as_superuser_around_triggers

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def _entry(chain: str, seq: int) -> Entry:
    return Entry.objects.get(chain=chain, seq=seq)


def verify():
    """``verify()`` as PostgreSQL runs it, checked against the walk in Python (the path of
    any other database, from the definition of the hash): both find the same problems."""
    result = verify_in_database()
    in_python = verify_in_database(fast=False)

    def seen(r):
        return [(p.kind, p.chain, p.seq, p.id, p.checkpoint, p.message) for p in r.problems]

    assert seen(in_python) == seen(result)
    assert (in_python.entries, in_python.chains) == (result.entries, result.chains)
    return result


def _first(result):
    assert not result.is_ok, "the tampering went unnoticed"
    return result.first_problem


def test_an_untouched_ledger_verifies(ledger_rows):
    checkpoint_take()
    result = verify()
    assert result.is_ok and result.warnings == []
    assert result.summary() == "OK: 8 entries in 3 chains, 1 checkpoints verified"


def test_a_changed_payload_is_named(ledger_rows):
    victim = _entry("rollback:1", 2)
    with as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_entry SET payload = %s WHERE id = %s", [json.dumps({"i": 99}), victim.pk]
        )
    problem = _first(verify())
    assert (problem.kind, problem.chain, problem.seq, problem.id) == (
        "hash",
        "rollback:1",
        2,
        victim.pk,
    )
    assert "does not match its hash" in problem.message


def test_a_changed_field_with_its_hash_recomputed_breaks_the_next_link(ledger_rows):
    """A careful attacker re-hashes the entry they changed: its successor no longer links."""
    from ledger.canonical import entry_hash

    victim = _entry("rollback:2", 1)
    fields = victim.hashed_fields() | {"outcome": "ok"}
    with as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_entry SET outcome = 'ok', hash = %s WHERE id = %s",
            [entry_hash(fields), victim.pk],
        )
    problem = _first(verify())
    following = _entry("rollback:2", 2)
    assert (problem.kind, problem.chain, problem.seq, problem.id) == (
        "link",
        "rollback:2",
        2,
        following.pk,
    )


def test_a_deleted_entry_is_named_by_the_gap_it_leaves(ledger_rows):
    victim = _entry("global", 1)
    with as_superuser_around_triggers() as cursor:
        cursor.execute("DELETE FROM ledger_entry WHERE id = %s", [victim.pk])
    problem = _first(verify())
    assert (problem.kind, problem.chain, problem.seq) == ("gap", "global", 2)
    assert problem.id == _entry("global", 2).pk
    assert "entry 1 of this chain is missing" in problem.message


def test_the_deleted_last_entry_of_a_chain_is_caught_by_its_head(ledger_rows):
    victim = _entry("rollback:1", 3)
    with as_superuser_around_triggers() as cursor:
        cursor.execute("DELETE FROM ledger_entry WHERE id = %s", [victim.pk])
    problem = _first(verify())
    assert (problem.kind, problem.chain, problem.seq) == ("head", "rollback:1", 3)


@pytest.mark.parametrize("columns", ["content", "everything but the id"])
def test_two_swapped_entries_are_named(ledger_rows, columns):
    a, b = _entry("rollback:1", 1), _entry("rollback:2", 2)
    swapped = ["action", "actor", "subject_type", "subject_id", "reason", "outcome", "payload"]
    if columns != "content":
        swapped += ["chain", "seq", "prev_hash", "hash", "at", "rollback_id"]
    assignments = ", ".join(f"{c} = other.{c}" for c in swapped)
    with as_superuser_around_triggers() as cursor:
        # (chain, seq) is unique: the attacker drops that constraint first.
        cursor.execute("ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_chain_seq")
        cursor.execute(
            f"UPDATE ledger_entry SET {assignments} FROM ledger_entry other "
            "WHERE (ledger_entry.id, other.id) IN ((%s, %s), (%s, %s))",
            [a.pk, b.pk, b.pk, a.pk],
        )
    result = verify()
    problem = _first(result)
    assert problem.id == a.pk  # the first bad entry is the earlier of the two
    assert result.problem_count >= 2


def test_a_removed_rollback_is_caught_by_the_checkpoint(ledger_rows):
    checkpoint_take()
    with as_superuser_around_triggers() as cursor:
        # Thorough: its entries and its chain head go, so no chain is left to look broken.
        cursor.execute("DELETE FROM ledger_entry WHERE rollback_id = 2")
        cursor.execute("DELETE FROM ledger_chainhead WHERE chain = 'rollback:2'")
    result = verify()
    problem = _first(result)
    assert (problem.kind, problem.chain, problem.checkpoint) == ("missing", "rollback:2", 1)
    assert (
        "every entry of this chain is missing: checkpoint 1 recorded 3 entries" in problem.message
    )
    assert result.problem_count == 1


def test_a_removed_rollback_without_checkpoint_is_caught_by_its_head(ledger_rows):
    with as_superuser_around_triggers() as cursor:
        cursor.execute("DELETE FROM ledger_entry WHERE rollback_id = 2")
    problem = _first(verify())
    assert (problem.kind, problem.chain) == ("head", "rollback:2")


def test_an_altered_checkpoint_is_named(ledger_rows):
    checkpoint = checkpoint_take()
    with as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_checkpoint SET entry_count = 7 WHERE id = %s", [checkpoint.pk]
        )
    problem = _first(verify())
    assert (problem.kind, problem.checkpoint) == ("checkpoint", 1)
    assert "does not match its hash" in problem.message


def test_a_checkpoint_signed_with_another_key_is_not_trusted(ledger_rows, settings):
    real = settings.LEDGER_SIGNING_KEY
    settings.LEDGER_SIGNING_KEY = signing.generate_key_b64()  # the attacker's own key
    checkpoint_take()
    settings.LEDGER_SIGNING_KEY = real
    problem = _first(verify())
    assert (problem.kind, problem.checkpoint) == ("checkpoint", 1)
    assert "which is not trusted" in problem.message


def test_verify_ledger_prints_ok_or_the_first_bad_entry_and_exits_1(ledger_rows, capsys):
    call_command("verify_ledger")
    assert capsys.readouterr().out.startswith("OK: 8 entries in 3 chains, 0 checkpoints verified")
    victim = _entry("rollback:1", 2)
    with as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_entry SET reason = 'nothing happened' WHERE id = %s", [victim.pk]
        )
    with pytest.raises(CommandError) as failed:
        call_command("verify_ledger")
    assert failed.value.returncode == 1
    out = capsys.readouterr().out
    assert f"FAILED: rollback:1 seq 2 (entry #{victim.pk}): its content does not match" in out
    assert f"first bad entry: chain=rollback:1 seq=2 id={victim.pk} kind=hash" in out
    latest = Verification.objects.latest()
    assert not latest.is_ok and latest.first_problem["id"] == victim.pk
    recorded = Entry.objects.filter(action="ledger.verified").order_by("id")
    assert [e.outcome for e in recorded] == ["ok", "failed"]


def test_verification_runs_in_one_snapshot(ledger_rows, write):
    """Appends made while it runs are not half-seen (the heads would disagree otherwise)."""
    with transaction.atomic():
        write(rollback_id=1)
        assert verify().is_ok


def test_a_chain_rewritten_after_a_checkpoint_is_named_at_the_first_recorded_entry(
    ledger_rows, write
):
    """Every hash re-computed from seq 2 on, links and head consistent: the chain walks
    clean, but checkpoint 1 recorded seq 3 and checkpoint 2 seq 5 with their old hashes."""
    from ledger.canonical import GENESIS, entry_hash

    checkpoint_take()
    write(rollback_id=1)
    write(rollback_id=1)
    checkpoint_take()
    entries = list(Entry.objects.filter(chain="rollback:1").order_by("seq"))
    with as_superuser_around_triggers() as cursor:
        previous = GENESIS
        for entry in entries:
            fields = entry.hashed_fields() | {"prev_hash": previous}
            if entry.seq == 2:
                fields["reason"] = "nothing to see"
            previous = entry_hash(fields)
            cursor.execute(
                "UPDATE ledger_entry SET reason = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [fields["reason"], fields["prev_hash"], previous, entry.pk],
            )
        cursor.execute(
            "UPDATE ledger_chainhead SET hash = %s WHERE chain = 'rollback:1'", [previous]
        )
    result = verify()
    assert [(p.kind, p.seq, p.checkpoint) for p in result.problems] == [
        ("checkpoint", 3, 1),
        ("checkpoint", 5, 2),
    ]
    assert result.first_problem.id == entries[2].pk
    assert "checkpoint 1 recorded hash" in result.first_problem.message
