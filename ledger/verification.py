"""Verification of the whole ledger: every entry's hash, every chain's links, the chain
heads and the signed checkpoints. ``verify()`` returns a structured result whose first
problem names the first bad entry; ``verification_run()`` stores it for the auditor's badge.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from itertools import groupby
from operator import itemgetter
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from ledger import db, signing
from ledger.canonical import (
    FIELDS,
    GENESIS,
    CanonicalError,
    canonical,
    entry_hash,
    pg_canonical_sql,
)
from ledger.checkpoints import replay
from ledger.models import ChainHead, Checkpoint, Entry, Outcome, Verification

MAX_PROBLEMS = 50  # kept in the result; the count goes on
CHUNK = 5_000
PARALLEL_FROM = 50_000  # entries (by the chain heads) from which several connections fetch


@dataclass
class Problem:
    kind: str  # hash, gap, order, link, checkpoint, missing, head
    chain: str
    seq: int | None
    id: int | None
    message: str
    checkpoint: int | None = None


@dataclass
class VerifyResult:
    entries: int = 0
    chains: int = 0
    checkpoints: int = 0
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    python_checked: int = 0  # rows the fast path could not confirm and Python did
    suspects: list = field(default_factory=list, repr=False)

    @property
    def is_ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0

    def add(self, problem: Problem) -> None:
        """Count every problem, keep the MAX_PROBLEMS with the smallest entry ids (the
        walk finds them out of order: re-checked rows and removed chains come last)."""
        self.problem_count += 1
        self.problems.append(problem)
        if len(self.problems) >= 2 * MAX_PROBLEMS:
            self._trim()

    def _trim(self) -> None:
        self.problems.sort(key=lambda p: (p.id is None, p.id or 0))
        del self.problems[MAX_PROBLEMS:]

    def summary(self) -> str:
        if self.is_ok:
            return (
                f"OK: {self.entries} entries in {self.chains} chains, "
                f"{self.checkpoints} checkpoints verified"
            )
        more = f" ({self.problem_count} problems in all)" if self.problem_count > 1 else ""
        return f"FAILED: {self.first_problem.message}{more}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.is_ok,
            "summary": self.summary(),
            "entries": self.entries,
            "chains": self.chains,
            "checkpoints": self.checkpoints,
            "problem_count": self.problem_count,
            "problems": [asdict(p) for p in self.problems],
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def _where(chain: str, seq: int | None, entry_id: int | None) -> str:
    return f"{chain} seq {seq} (entry #{entry_id})"


def _recheck_in_python(alias: str, result: VerifyResult) -> None:
    """The rows whose canonical text did not hash right, rendered again from their columns
    in Python (the definition): a mismatch there is a changed entry."""
    suspects, result.suspects = result.suspects, []
    for start in range(0, len(suspects), 1000):
        batch = suspects[start : start + 1000]
        ids = [suspect[0] for suspect in batch]
        rows = {
            row["id"]: row for row in Entry.objects.using(alias).filter(pk__in=ids).values(*FIELDS)
        }
        for entry_id, chain, seq, digest in batch:
            try:
                matches = entry_hash(rows[entry_id]) == digest
            except CanonicalError:
                matches = False  # a column emptied or of the wrong type
            if matches:
                result.python_checked += 1
                continue
            result.add(
                Problem(
                    "hash",
                    chain,
                    seq,
                    entry_id,
                    f"{_where(chain, seq, entry_id)}: its content does not match its hash "
                    "(changed after it was written)",
                )
            )


def _pages(rows, size: int = CHUNK):
    """Rows in lists of ``size``: the walk's loop is over lists, not through generators."""
    page = []
    for row in rows:
        page.append(row)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _hash_ok_sql() -> str:
    """Whether SHA-256 of the row's canonical text, rendered by PostgreSQL, is its stored
    ``hash``: true, false, or NULL when a column is NULL."""
    text = pg_canonical_sql(exact=False)
    return (
        f"encode(pg_catalog.sha256(convert_to({text}, 'UTF8')), 'hex') = \"ledger_entry\".\"hash\""
    )


def _walk_sql(low: bool, high: bool) -> str:
    """The whole walk of step 2 as one query over the chains of one share (``chain`` from
    ``%(low)s`` up to, not including, ``%(high)s``; the first share also takes a NULL chain).

    A window over each chain in seq order gives every row its predecessor (``lag``), so
    PostgreSQL checks the hash, the seq and the link of every row where it reads them, and
    returns only the rows that fail one of them, plus each chain's last row (with its
    position in the chain: the chain's entry count). The order is that of the unique
    (chain, seq) index, which PostgreSQL reads without sorting."""
    where = []
    if low:
        where.append('"chain" >= %(low)s')
    if high:
        where.append('("chain" < %(high)s OR "chain" IS NULL)' if not low else '"chain" < %(high)s')
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    return f"""
        SELECT id, chain, seq, prev_hash, hash, hash_ok, prev_seq, prev_digest, is_last, position
        FROM (
            SELECT id, chain, seq, prev_hash, hash, {_hash_ok_sql()} AS hash_ok,
                   lag(seq) OVER w AS prev_seq, lag(hash) OVER w AS prev_digest,
                   lead(id) OVER w IS NULL AS is_last, row_number() OVER w AS position
            FROM ledger_entry {condition}
            WINDOW w AS (PARTITION BY chain ORDER BY seq, id)
        ) AS walked
        WHERE is_last OR hash_ok IS NOT TRUE
           OR seq IS DISTINCT FROM coalesce(prev_seq, 0) + 1
           OR prev_hash IS DISTINCT FROM coalesce(prev_digest, '{GENESIS}')
    """


def _shares(alias: str, workers: int) -> list[tuple[str | None, str | None]]:
    """``workers`` contiguous ranges of chain names with about as many entries each (by the
    chain heads, in the database's order of ``chain``). The first range has no lower bound
    and the last no upper one, so every row falls in exactly one range whatever the heads
    say: they only balance the work."""
    heads = list(
        ChainHead.objects.using(alias).order_by("chain").values_list("chain", "seq").iterator()
    )
    total = sum(seq for _, seq in heads)
    bounds: list[str] = []
    running = 0
    for chain, seq in heads:
        # ``chain`` starts the next share once the ones before it hold their part.
        if len(bounds) < workers - 1 and running >= total * (len(bounds) + 1) / workers:
            bounds.append(chain)
        running += seq
    edges: list[str | None] = [None, *bounds, None]
    return list(zip(edges, edges[1:], strict=False))


_SNAPSHOT = re.compile(r"^[0-9A-F]+-[0-9A-F]+-[0-9]+$")


def _walk_in_database(alias: str, workers: int, snapshot: str | None):
    """Pages of the rows ``_walk_sql`` returns, from ``workers`` connections at once, each
    in the snapshot of the verification and each for one share of the chains, so that
    PostgreSQL checks on several cores; with one worker (or no snapshot to share), from the
    verification's own connection.

    1. Each fetcher thread opens its own connection, joins the snapshot
       (``SET TRANSACTION SNAPSHOT``) and pages through a server-side cursor.
    2. Pages go through a small queue (memory stays bounded), then to the checks.
    """
    if workers <= 1 or snapshot is None:
        own = connections[alias]
        own.ensure_connection()
        with own.connection.cursor(name="ledger_verify", binary=True) as rows:
            rows.execute(_walk_sql(False, False), {})
            while page := rows.fetchmany(CHUNK):
                yield page
        return
    if not _SNAPSHOT.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    shares = _shares(alias, workers)
    pages: queue.Queue = queue.Queue(maxsize=2 * len(shares))
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def fetch(share: int, low: str | None, high: str | None) -> None:
        connection = connections[alias]
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                raw = connection.connection
                with raw.cursor(name=f"ledger_verify_{share}", binary=True) as rows:
                    rows.execute(
                        _walk_sql(low is not None, high is not None), {"low": low, "high": high}
                    )
                    while not stop.is_set() and (page := rows.fetchmany(CHUNK)):
                        put(page)
        except BaseException as exc:  # handed to the checks, which raise it
            put(exc)
        finally:
            put(None)
            connection.close()

    threads = [
        threading.Thread(target=fetch, args=(k, low, high), daemon=True)
        for k, (low, high) in enumerate(shares)
    ]
    for thread in threads:
        thread.start()
    try:
        finished = 0
        while finished < len(threads):
            page = pages.get()
            if page is None:
                finished += 1
            elif isinstance(page, BaseException):
                raise page
            else:
                yield page
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def _walk_in_python(alias: str):
    """The same rows, for any database: every entry in the order of the walk, its canonical
    text rendered and hashed in Python, each with its predecessor in its chain."""
    names = ("hash", *FIELDS)
    rows = (
        Entry.objects.using(alias)
        .order_by("chain", "seq", "id")
        .values_list(*names)
        .iterator(chunk_size=CHUNK)
    )

    def walked():
        for chain, entries in groupby(rows, key=itemgetter(names.index("chain"))):
            held, prev_seq, prev_digest = None, None, None  # a row waits to learn if it is last
            for position, row in enumerate(entries, 1):
                values = dict(zip(names, row, strict=True))
                try:
                    hash_ok = sha256(canonical(values).encode()).hexdigest() == values["hash"]
                except CanonicalError:
                    hash_ok = None
                if held is not None:
                    yield (*held, False, position - 1)
                held = (values["id"], chain, values["seq"], values["prev_hash"], values["hash"])
                held += (hash_ok, prev_seq, prev_digest)
                prev_seq, prev_digest = values["seq"], values["hash"]
            yield (*held, True, position)

    return _pages(walked())


def verify(
    *, using: str | None = None, fast: bool | None = None, workers: int | None = None
) -> VerifyResult:
    """Verify the whole ledger in one pass; the first problem is the first bad entry.

    1. Replay the checkpoints: each one's hash, its link to the previous one, its Ed25519
       signature by a trusted key and its counts; collect every chain head they recorded.
    2. Walk every chain in seq order and check that each entry's seq is the next one, that
       its prev_hash is the previous entry's hash and that its hash is SHA-256 of its
       canonical form. On PostgreSQL (``fast``) the database does the whole walk, from
       ``workers`` connections when the ledger is large, and returns only the rows that
       fail and each chain's last row; rows whose text does not hash right are re-checked
       from their columns in Python.
    3. Check that the entries the checkpoints recorded are still there with those hashes,
       and that the chain heads agree with the last entry of each chain.
    4. Warn when an append-only trigger is missing or disabled.

    Runs in one REPEATABLE READ snapshot on PostgreSQL (shared by the fetching
    connections), so appends made meanwhile are simply not seen.
    """
    started = time.perf_counter()
    alias = using or router.db_for_read(Entry)
    connection = connections[alias]
    is_postgres = connection.vendor == "postgresql"
    fast = is_postgres if fast is None else fast
    result = VerifyResult()
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=alias):
        snapshot = None
        if outermost and is_postgres:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot = cursor.fetchone()[0]
        state = replay(
            Checkpoint.objects.using(alias).order_by("seq").iterator(chunk_size=100),
            signing.trusted_public_keys(),
        )
        result.checkpoints = state.count
        for p in state.problems:
            result.add(Problem(**p))
        if workers is None:
            workers = getattr(settings, "LEDGER_VERIFY_WORKERS", 2)
            size = ChainHead.objects.using(alias).aggregate(n=Sum("seq"))["n"] or 0
            workers = workers if size >= PARALLEL_FROM else 1
        rows = _walk_in_database(alias, workers, snapshot) if fast else _walk_in_python(alias)
        heads, troubled = _check(rows, result)
        _recheck_in_python(alias, result)
        result.chains = len(heads)
        _check_anchors(alias, state.anchors, troubled, result)
        _check_missing(state.anchors, heads, result)
        _check_heads(alias, heads, result)
    result._trim()
    result.warnings.extend(db.trigger_problems(alias))
    if result.python_checked:
        result.warnings.append(
            f"{result.python_checked} entries were rendered differently by the database and "
            "verified in Python"
        )
    result.seconds = time.perf_counter() - started
    return result


Heads = dict[str, tuple[int, str, int]]


def _check(pages, result: VerifyResult) -> tuple[Heads, set[str]]:
    """Step 2 on the walked rows (each with its predecessor in its chain: ``_walk_sql``).
    Returns chain -> (last seq, last hash, last id) and the chains with a problem; rows
    whose text does not hash right wait in ``result.suspects`` for ``_recheck_in_python``."""
    heads: Heads = {}
    troubled: set[str] = set()
    suspects = result.suspects
    entries = 0
    for page in pages:
        for row in page:
            entry_id, chain, seq, prev_hash, digest, hash_ok, prev_seq, prev_digest = row[:8]
            is_last, position = row[8], row[9]
            if is_last:
                heads[chain] = (seq, digest, entry_id)
                entries += position
            if hash_ok is not True:
                suspects.append((entry_id, chain, seq, digest))
                troubled.add(chain)
            want_seq = (prev_seq or 0) + 1
            want_prev = GENESIS if prev_digest is None else prev_digest
            if seq != want_seq:
                if seq is not None and seq > want_seq:
                    gone = f"{want_seq}" if seq == want_seq + 1 else f"{want_seq}-{seq - 1}"
                    what = (
                        f"expected seq {want_seq}: entry {gone} of this chain is missing (deleted)"
                    )
                    kind = "gap"
                else:
                    what = (
                        f"expected seq {want_seq}: seq {seq} again or out of order "
                        "(entries moved, swapped or duplicated)"
                    )
                    kind = "order"
                result.add(
                    Problem(kind, chain, seq, entry_id, f"{_where(chain, seq, entry_id)}: {what}")
                )
                troubled.add(chain)
            elif prev_hash != want_prev:
                result.add(
                    Problem(
                        "link",
                        chain,
                        seq,
                        entry_id,
                        f"{_where(chain, seq, entry_id)}: prev_hash is not the hash of seq "
                        f"{want_seq - 1} (an entry before it was replaced)",
                    )
                )
                troubled.add(chain)
    result.entries = entries
    return heads, troubled


def _anchored_entries(alias: str, pairs: list[tuple[str, int]]):
    """(chain, seq, id, hash) of the entries at these places, in batches."""
    for start in range(0, len(pairs), 5_000):
        batch = pairs[start : start + 5_000]
        if connections[alias].vendor == "postgresql":
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT e.chain, e.seq, e.id, e.hash "
                    "FROM unnest(%s::text[], %s::bigint[]) AS a(chain, seq) "
                    "JOIN ledger_entry e ON e.chain = a.chain AND e.seq = a.seq",
                    [[chain for chain, _ in batch], [seq for _, seq in batch]],
                )
                yield from cursor.fetchall()
        else:
            for part in range(0, len(batch), 200):
                places = Q()
                for chain, seq in batch[part : part + 200]:
                    places |= Q(chain=chain, seq=seq)
                yield from (
                    Entry.objects.using(alias)
                    .filter(places)
                    .values_list("chain", "seq", "id", "hash")
                )


def _check_anchors(alias: str, anchors, troubled: set[str], result: VerifyResult) -> None:
    """Step 3 for the entries the checkpoints recorded (``anchors``: chain -> {seq: (hash,
    checkpoint)}); those found are taken out of ``anchors``, those left are missing.

    A chain that walked clean is bound by its links to its latest recorded entry: when
    that one is there with the recorded hash, so are the earlier ones. So only the latest
    is looked up, except in a chain with a problem or whose latest does not match, where
    every recorded entry is, to name the first one that changed."""
    latest = [
        (chain, max(recorded))
        for chain, recorded in anchors.items()
        if recorded and chain not in troubled
    ]
    found = _compare_anchors(alias, anchors, latest, result)
    full = [
        (chain, seq)
        for chain, recorded in anchors.items()
        if recorded and (chain in troubled or found.get(chain) is False)
        for seq in recorded
    ]
    for chain, ok in found.items():
        if ok:
            anchors[chain].clear()
    _compare_anchors(alias, anchors, full, result)


def _compare_anchors(alias: str, anchors, places, result: VerifyResult) -> dict[str, bool]:
    """Look these recorded entries up; those found leave ``anchors``. Returns chain ->
    whether every one found had its recorded hash and none was missing."""
    matched = {chain: True for chain, _ in places}
    for chain, seq, entry_id, digest in _anchored_entries(alias, places):
        expected, checkpoint = anchors[chain].get(seq, (None, None))
        if expected is None:
            continue  # a second entry at one place (duplicated): reported by the walk
        if expected != digest:
            matched[chain] = False
            result.add(
                Problem(
                    "checkpoint",
                    chain,
                    seq,
                    entry_id,
                    f"{_where(chain, seq, entry_id)}: checkpoint {checkpoint} recorded "
                    f"hash {expected[:12]}… for this entry, it now has {digest[:12]}…",
                    checkpoint,
                )
            )
        anchors[chain].pop(seq, None)
    for chain, seq in places:
        if seq in anchors[chain]:
            matched[chain] = False
    return matched


def _check_missing(anchors, heads, result: VerifyResult) -> None:
    """Entries a checkpoint recorded that the walk did not meet: removed chains and ends."""
    for chain in sorted(anchors):
        left = anchors[chain]
        if not left:
            continue
        seq = min(left)
        digest, checkpoint = left[seq]
        if chain not in heads:
            what = (
                f"{chain}: every entry of this chain is missing: checkpoint {checkpoint} "
                f"recorded {max(left)} entries (the chain was removed)"
            )
        else:
            what = (
                f"{chain} seq {seq}: missing: checkpoint {checkpoint} recorded this entry "
                f"(hash {digest[:12]}…) but the chain now ends at seq {heads[chain][0]}"
            )
        result.add(Problem("missing", chain, seq, None, what, checkpoint))


def _check_heads(alias: str, heads, result: VerifyResult) -> None:
    recorded = dict(
        (chain, (seq, digest))
        for chain, seq, digest in ChainHead.objects.using(alias).values_list("chain", "seq", "hash")
    )
    for chain, (seq, digest) in sorted(recorded.items()):
        last = heads.get(chain)
        if last is None:
            if seq > 0:
                result.add(
                    Problem(
                        "head",
                        chain,
                        1,
                        None,
                        f"{chain}: its head says it has {seq} entries but none is left "
                        "(the chain was removed)",
                    )
                )
            continue
        if seq > last[0]:
            result.add(
                Problem(
                    "head",
                    chain,
                    last[0] + 1,
                    None,
                    f"{chain} seq {last[0] + 1}: missing: the chain head says the chain ends "
                    f"at seq {seq} but its last entry is seq {last[0]} (entries removed)",
                )
            )
        elif seq < last[0] or digest != last[1]:
            result.add(
                Problem(
                    "head",
                    chain,
                    last[0],
                    last[2],
                    f"{_where(chain, last[0], last[2])}: the chain head (seq {seq}, hash "
                    f"{digest[:12]}…) does not name this last entry (written around record())",
                )
            )
    for chain in sorted(set(heads) - set(recorded), key=str):  # a NULL chain too
        seq, _, entry_id = heads[chain]
        result.add(
            Problem(
                "head",
                chain,
                seq,
                entry_id,
                f"{_where(chain, seq, entry_id)}: the chain has no head row (deleted)",
            )
        )


def verification_run(*, actor: Any) -> Verification:
    """Verify, store the result for the badge, and ledger that it was done."""
    from ledger.services import actor_label, record

    started = timezone.now()
    result = verify()
    with transaction.atomic():
        run = Verification.objects.create(
            started_at=started,
            seconds=result.seconds,
            actor=actor_label(actor),
            is_ok=result.is_ok,
            entries=result.entries,
            chains=result.chains,
            checkpoints=result.checkpoints,
            problem_count=result.problem_count,
            problems=[asdict(p) for p in result.problems],
            warnings=result.warnings,
        )
        try:
            with transaction.atomic():  # a savepoint: a collision below keeps the result
                record(
                    actor=actor,
                    action="ledger.verified",
                    subject_type="verification",
                    subject_id=run.pk,
                    outcome=Outcome.OK if result.is_ok else Outcome.FAILED,
                    reason=result.summary(),
                    payload={
                        "entries": result.entries,
                        "chains": result.chains,
                        "checkpoints": result.checkpoints,
                        "problem_count": result.problem_count,
                        "first_problem": asdict(result.first_problem)
                        if result.first_problem
                        else None,
                    },
                )
        except IntegrityError:
            # The global chain's head was moved back (the tampering this run found, if it
            # did): the next entry's place is taken. The result is kept and shown all the
            # same, saying why it is not in the ledger.
            run.warnings = [
                *run.warnings,
                "This verification could not be ledgered: the global chain's head names a "
                "place that is already taken, so the chain was changed around record().",
            ]
            run.save(update_fields=["warnings"])
    return run
