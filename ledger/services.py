"""``record()``: the one way to write to the ledger.

Call it inside the transaction of the change it records, so that the change and its entry
commit together or not at all.

Each entry joins a hash chain: its rollback's (``rollback:<id>``) or the global one. An
append locks that chain's head row until the caller's transaction ends, so appends to one
chain are serialised (each entry names the hash of the one before it) while appends to
different rollbacks run side by side.

A transaction may append to several chains. So that two such transactions can never wait for
each other (a deadlock, which PostgreSQL breaks by aborting one of them and its change), the
chains have one order (``chain_order_key``: rollbacks by id, then the global chain) and a
transaction only ever *waits* for a chain that comes after every chain it holds. A chain
that comes before is taken only if it is free at once (``SKIP LOCKED``); if it is not (or
does not exist yet), the entry joins the last chain the transaction already holds instead.
It still names its rollback, and it is hash-chained and verified like any other entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import connections, router
from django.db.models import Max
from django.utils import timezone

from config.telemetry import current_trace_id
from ledger.canonical import GENESIS, entry_hash
from ledger.models import ChainHead, Entry, Outcome, chain_for

# The transaction's last chain in the lock order (``chain_order_key``), kept in a setting that
# PostgreSQL forgets when the transaction (or the savepoint it was set in) ends.
_HELD = "unwind.ledger_chain"

# Locks the chain's head and takes the next ``n`` entry ids in one round trip. MATERIALIZED
# makes PostgreSQL lock the row before nextval() runs, so ids grow with seq inside a chain,
# which lets verification walk the whole ledger once in id order. ``try``: skip the row if another
# transaction holds it (no wait); ``wait``: wait for it. Both return the chain this
# transaction held last before, and record the later of the two as held.
_PG_LOCK_HEAD = (
    "WITH held AS MATERIALIZED (SELECT current_setting('" + _HELD + "', true) AS key), "
    "head AS MATERIALIZED (SELECT seq, hash FROM ledger_chainhead WHERE chain = %(chain)s "
    "FOR UPDATE{mode}) "
    "SELECT held.key, head.seq, head.hash, "
    "CASE WHEN head.seq IS NOT NULL THEN ARRAY(SELECT nextval(%(sequence)s::regclass) "
    "FROM generate_series(1, %(n)s)) END, "
    "CASE WHEN head.seq IS NOT NULL THEN set_config('" + _HELD + "', "
    "greatest(coalesce(held.key, '') COLLATE \"C\", %(key)s), true) END "
    "FROM held LEFT JOIN head ON true"
)
_PG_TRY_HEAD = _PG_LOCK_HEAD.format(mode=" SKIP LOCKED")
_PG_WAIT_HEAD = _PG_LOCK_HEAD.format(mode="")
_pg_sequences: dict[str, str] = {}
# Entries recorded inside ``deferred()``, written together when it ends.
_deferred: ContextVar[list[Entry] | None] = ContextVar("ledger_deferred", default=None)


def chain_order_key(chain: str) -> str:
    """The chain's place in the lock order, as text that sorts bytewise: rollbacks by id,
    then any other chain (the global one) by name; the chain's name follows ``|``."""
    if chain.startswith("rollback:"):
        return f"r{int(chain.removeprefix('rollback:')):020d}|{chain}"
    return f"z{chain}|{chain}"


def actor_label(actor: Any) -> str:
    """'user:alice' for a user, the string itself for a worker or system actor."""
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    username = getattr(actor, "get_username", None)
    return f"user:{username()}" if username else str(actor)


def _pg_sequence(connection) -> str:
    if connection.alias not in _pg_sequences:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence('ledger_entry', 'id')")
            _pg_sequences[connection.alias] = cursor.fetchone()[0]
    return _pg_sequences[connection.alias]


def _lock_head(connection, chain: str, n: int = 1) -> tuple[str, int, str, list[int]]:
    """(chain, seq, hash) of the head the new entries go after, locked until the transaction
    ends, and the ids of the next ``n`` entries (growing; on SQLite the first one only). The
    chain is ``chain`` unless taking it could deadlock (module docstring)."""
    if connection.vendor != "postgresql":
        seq, digest, entry_id = _lock_head_sqlite(chain)
        return chain, seq, digest, [entry_id]
    key = chain_order_key(chain)
    params = {"chain": chain, "key": key, "sequence": _pg_sequence(connection), "n": n}
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(_PG_TRY_HEAD, params)
            held, seq, digest, entry_id, _ = cursor.fetchone()
            if seq is not None:
                return chain, seq, digest, entry_id
            if held and key < held:
                # Out of order and busy (or new): the last chain held takes the entry.
                return _lock_head(connection, held.partition("|")[2], n)
            cursor.execute(_PG_WAIT_HEAD, params)
            held, seq, digest, entry_id, _ = cursor.fetchone()
            if seq is not None:
                return chain, seq, digest, entry_id
        _create_head(chain)
    raise RuntimeError(f"ledger chain head {chain!r} could not be locked")


def _lock_head_sqlite(chain: str) -> tuple[int, str, int]:
    # The IMMEDIATE transaction already holds the database's write lock, so nobody else
    # appends until it commits and max(id) + 1 is ours.
    for _ in range(2):
        row = (
            ChainHead.objects.select_for_update()
            .filter(chain=chain)
            .values_list("seq", "hash")
            .first()
        )
        if row is not None:
            last = Entry.objects.aggregate(last=Max("id"))["last"] or 0
            return row[0], row[1], last + 1
        _create_head(chain)
    raise RuntimeError(f"ledger chain head {chain!r} could not be locked")


def _create_head(chain: str) -> None:
    """A new chain's head (or nothing, when a concurrent append just made it; on PostgreSQL
    ON CONFLICT waits for that transaction: only ever for a chain in lock order)."""
    ChainHead.objects.bulk_create(
        [ChainHead(chain=chain, seq=0, hash=GENESIS)], ignore_conflicts=True
    )


def record(
    *,
    actor: Any,
    action: str,
    subject: Any = None,
    subject_type: str = "",
    subject_id: Any = "",
    rollback_id: int | None = None,
    reason: str = "",
    outcome: str = Outcome.OK,
    payload: dict | None = None,
    trace_id: str = "",
) -> Entry:
    """Append one entry to its chain, in the caller's transaction.

    1. Lock the chain's head row (``SELECT … FOR UPDATE``) and take the next id: the
       rollback's chain, or the global one, or the last chain the transaction holds when
       waiting for that one could deadlock (module docstring).
    2. Hash the entry's canonical form, which names the head's hash as ``prev_hash``.
    3. Insert the entry and move the head; both commit or roll back with the caller.
    """
    if subject is not None:
        subject_type = subject_type or subject._meta.model_name
        subject_id = subject_id or subject.pk
    connection = connections[router.db_for_write(Entry)]
    if not connection.in_atomic_block:
        raise RuntimeError("ledger.record() must be called inside the transaction of its change")
    user = actor if getattr(actor, "is_authenticated", False) else None
    # What the database will give back (tuples become lists, keys strings), so that the
    # hash computed now is the hash of what verification reads later.
    payload = json.loads(json.dumps(payload or {}))
    entry = Entry(
        chain=chain_for(rollback_id),
        at=timezone.now(),
        actor=actor_label(actor),
        actor_user=user,
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        rollback_id=None if rollback_id is None else int(rollback_id),
        reason=reason or "",
        outcome=str(outcome),
        trace_id=trace_id or current_trace_id(),
        payload=payload,
    )
    pending = _deferred.get()
    if pending is not None and connection.vendor == "postgresql":
        pending.append(entry)  # written when deferred() ends, with the others
        return entry
    chain, seq, prev_hash, (entry.id,) = _lock_head(connection, entry.chain)
    entry.chain, entry.seq, entry.prev_hash = chain, seq + 1, prev_hash
    entry.hash = entry_hash(entry.hashed_fields())
    if connection.vendor == "postgresql":
        _pg_append(connection, entry)
    else:
        entry.save(force_insert=True, using=connection.alias)
        ChainHead.objects.using(connection.alias).filter(chain=chain).update(
            seq=entry.seq, hash=entry.hash
        )
    return entry


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, ``record()`` keeps its entries, and they are written together when
    the block ends — still inside the caller's transaction: each chain's head is locked once
    (in the chains' lock order), every entry is inserted by one statement and every head
    moved by another, instead of two round trips an entry. For a worker recording a batch
    of steps (rollbacks/engine/loop.py).

    Only around code that does not roll back a savepoint it recorded in and carry on: the
    kept entries would be written all the same. An exception out of the block writes
    nothing (the transaction is rolling back). The entries' ids, seqs and hashes are set
    when they are written. On SQLite, entries are written as they are recorded.
    """
    if _deferred.get() is not None:  # nested: the outer block writes them
        yield
        return
    pending: list[Entry] = []
    token = _deferred.set(pending)
    try:
        yield
    finally:
        _deferred.reset(token)
    if pending:
        _pg_append_many(connections[router.db_for_write(Entry)], pending)


def _pg_append_many(connection, entries: list[Entry]) -> None:
    """Write ``entries`` (in the order recorded within each chain): lock each chain's head
    once, in lock order; take their ids; hash them in chain order; insert them all and move
    every head in one statement."""
    wanted: dict[str, list[Entry]] = {}
    for entry in entries:
        wanted.setdefault(entry.chain, []).append(entry)
    chains: dict[str, list[Entry]] = {}  # the chain each entry joins, in lock order
    starts: dict[str, tuple[int, str]] = {}
    ids: list[int] = []
    for chain in sorted(wanted, key=chain_order_key):
        # Each lock takes as many ids as its chain has entries: taken while holding the
        # heads, so ids keep growing with seq inside each chain (verification walks them in
        # id order), and sorted below they follow the entries' order.
        got, seq, prev_hash, taken = _lock_head(connection, chain, len(wanted[chain]))
        ids.extend(taken)
        if got not in chains:  # else taken by an earlier group (lock order): go on from it
            chains[got], starts[got] = [], (seq, prev_hash)
        chains[got].extend(wanted[chain])
    next_id = iter(sorted(ids))
    heads: dict[str, tuple[int, str]] = {}
    for chain, group in chains.items():
        seq, prev_hash = starts[chain]
        for entry in group:
            entry.id, entry.chain, entry.seq, entry.prev_hash = (
                next(next_id),
                chain,
                seq + 1,
                prev_hash,
            )
            entry.hash = entry_hash(entry.hashed_fields())
            seq, prev_hash = entry.seq, entry.hash
        heads[chain] = (seq, prev_hash)
    fields = Entry._meta.concrete_fields
    columns = ", ".join(f.column for f in fields)
    rows = ", ".join("(" + ", ".join("%s" for _ in fields) + ")" for _ in entries)
    values = [
        f.get_db_prep_save(getattr(e, f.attname), connection) for e in entries for f in fields
    ]
    moved = ", ".join("(%s, %s, %s)" for _ in heads)
    head_values = [v for chain, (seq, digest) in heads.items() for v in (chain, seq, digest)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH new AS (INSERT INTO ledger_entry ({columns}) VALUES {rows} RETURNING 1) "
            "UPDATE ledger_chainhead AS h SET seq = v.seq, hash = v.hash "
            f"FROM (VALUES {moved}) AS v(chain, seq, hash) "
            "WHERE h.chain = v.chain AND EXISTS (SELECT 1 FROM new)",
            [*values, *head_values],
        )
    for entry in entries:
        entry._state.adding = False
        entry._state.db = connection.alias


def _pg_append(connection, entry: Entry) -> None:
    """Insert the entry and move its chain's head in one round trip (the hot path of every
    state change: the ORM's save() and a separate UPDATE cost twice as much)."""
    columns = [f.column for f in Entry._meta.concrete_fields]
    values = [
        f.get_db_prep_save(getattr(entry, f.attname), connection)
        for f in Entry._meta.concrete_fields
    ]
    placeholders = ", ".join("%s" for _ in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH new AS (INSERT INTO ledger_entry ({', '.join(columns)}) VALUES ({placeholders}) "
            "RETURNING 1) UPDATE ledger_chainhead SET seq = %s, hash = %s "
            "WHERE chain = %s AND EXISTS (SELECT 1 FROM new)",
            [*values, entry.seq, entry.hash, entry.chain],
        )
    entry._state.adding = False
    entry._state.db = connection.alias
