"""record(): hash chains per rollback plus a global one, inside the caller's transaction."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

from ledger.canonical import GENESIS, canonical, entry_hash
from ledger.models import ChainHead, Entry
from ledger.services import record
from ledger.verification import verify

pytestmark = pytest.mark.django_db


def test_entries_of_a_rollback_form_one_chain_and_the_rest_the_global_chain(ledger_rows):
    chains = {}
    for entry in Entry.objects.order_by("id"):
        chains.setdefault(entry.chain, []).append(entry)
    assert sorted(chains) == ["global", "rollback:1", "rollback:2"]
    for chain, entries in chains.items():
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), chain
        assert entries[0].prev_hash == GENESIS
        for before, after in zip(entries, entries[1:], strict=False):
            assert after.prev_hash == before.hash
    heads = dict(ChainHead.objects.values_list("chain", "seq"))
    assert heads == {"global": 2, "rollback:1": 3, "rollback:2": 3}


def test_the_hash_is_sha256_of_the_canonical_form_of_what_the_database_gives_back(write):
    entry = write(
        rollback_id=7,
        reason='quote " backslash \\ newline \n é 😀',
        payload={"b": (1, 2), "a": {"f": 1.5, "big": 1e20, "tiny": 1e-7, "u": "é"}, "n": None},
    )
    stored = Entry.objects.get(pk=entry.pk)
    fields = stored.hashed_fields()
    assert stored.hash == entry.hash == entry_hash(fields)
    assert stored.payload["b"] == [1, 2]  # a tuple is stored (and hashed) as a list
    text = canonical(fields)
    assert json.loads(text)["chain"] == "rollback:7"
    assert text.startswith('{"action":"test.action","actor":"worker","actor_user_id":null,"at":"')
    result = verify()
    assert result.is_ok, result.summary()
    assert result.python_checked == 0  # the database renders it exactly as Python does


@pytest.mark.postgres
def test_verification_renders_line_breaks_and_tabs_itself_and_rechecks_other_controls(write):
    """PostgreSQL's cheaper rendering escapes line feed, carriage return and tab as JSON does; a row
    with another control character hashes differently there and is verified in Python."""
    write(rollback_id=8, reason="two\r\nlines\tand a tab", actor="user:x\ny")
    assert verify().python_checked == 0
    write(rollback_id=8, reason="bell \x07 and form feed \f", subject_id="\x01")
    result = verify()
    assert result.is_ok, result.summary()
    assert result.python_checked == 1


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_run_outside_a_transaction(write):
    write()  # the flush that ends this test empties the ledger despite its triggers
    with pytest.raises(RuntimeError, match="inside the transaction"):
        record(actor="worker", action="x")
    assert Entry.objects.count() == 1


def test_an_entry_rolls_back_with_its_transaction_and_leaves_no_gap(write):
    write(rollback_id=3)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        record(actor="worker", action="x", rollback_id=3)
        1 / 0  # noqa: B018
    write(rollback_id=3)
    assert list(Entry.objects.filter(chain="rollback:3").values_list("seq", flat=True)) == [1, 2]
    assert verify().is_ok


def test_the_keyword_signature_other_apps_use_still_works(carol):
    with transaction.atomic():
        entry = record(
            actor=carol,
            action="token.created",
            subject=carol,
            rollback_id=None,
            reason="why",
            outcome="refused",
            payload={"k": "v"},
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        )
    assert (entry.actor, entry.actor_user_id) == ("user:carol", carol.pk)
    assert (entry.subject_type, entry.subject_id) == ("user", str(carol.pk))
    assert (entry.outcome, entry.trace_id, entry.chain) == (
        "refused",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "global",
    )


def test_deleting_a_user_leaves_their_entries_as_they_were(django_user_model, write):
    user = django_user_model.objects.create_user("gone", password="x")
    entry, user_id = write(actor=user), user.pk
    user.delete()
    stored = Entry.objects.get(pk=entry.pk)
    assert stored.actor_user_id == user_id and stored.actor == "user:gone"
    assert verify().is_ok


@pytest.mark.postgres
def test_deferred_entries_are_written_together_chained_as_if_recorded_one_by_one():
    from ledger.services import deferred

    with transaction.atomic():
        record(actor="worker", action="before", rollback_id=2)  # a chain that has a head
        with deferred():
            for i in range(3):
                for rollback_id in (3, 2, None):
                    record(actor="worker", action=f"step.{i}", rollback_id=rollback_id)
            assert Entry.objects.count() == 1  # nothing written until the block ends
        record(actor="worker", action="after", rollback_id=3)
    chains: dict[str, list[Entry]] = {}
    for entry in Entry.objects.order_by("id"):
        chains.setdefault(entry.chain, []).append(entry)
    assert {c: [e.action for e in es] for c, es in chains.items()} == {
        "rollback:2": ["before", "step.0", "step.1", "step.2"],
        "rollback:3": ["step.0", "step.1", "step.2", "after"],
        "global": ["step.0", "step.1", "step.2"],
    }
    for entries in chains.values():
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    heads = dict(ChainHead.objects.values_list("chain", "seq"))
    assert heads == {"rollback:2": 4, "rollback:3": 4, "global": 3}
    result = verify()
    assert result.is_ok, result.summary()


@pytest.mark.postgres
def test_an_error_inside_a_deferred_block_writes_none_of_its_entries():
    from ledger.services import deferred

    with pytest.raises(RuntimeError), transaction.atomic(), deferred():
        record(actor="worker", action="lost", rollback_id=4)
        raise RuntimeError("the caller's change failed")
    assert not Entry.objects.exists() and not ChainHead.objects.filter(seq__gt=0).exists()
