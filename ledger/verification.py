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
from typing import Any

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import Sum
from django.db.models.expressions import RawSQL
from django.utils import timezone

from ledger import db, signing
from ledger.canonical import FIELDS, GENESIS, canonical, entry_hash, pg_canonical_sql
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
            if entry_hash(rows[entry_id]) == digest:
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
    ``hash``: true, false, or NULL when a column is NULL. Rendering and hashing run in the
    fetching connections, in parallel, and only a boolean crosses to Python, whose single
    thread would otherwise hash every row."""
    text = pg_canonical_sql(exact=False)
    return (
        f"encode(pg_catalog.sha256(convert_to({text}, 'UTF8')), 'hex') = \"ledger_entry\".\"hash\""
    )


def _stream_fast(alias: str):
    """Pages of (id, chain, seq, prev_hash, hash, hash ok) in id order, rendered and hashed
    by PostgreSQL, through a server-side cursor in the current transaction."""
    rows = (
        Entry.objects.using(alias)
        .order_by("id")
        .annotate(_ok=RawSQL(_hash_ok_sql(), ()))
        .values_list("id", "chain", "seq", "prev_hash", "hash", "_ok")
        .iterator(chunk_size=CHUNK)
    )
    return _pages(rows)


_SNAPSHOT = re.compile(r"^[0-9A-F]+-[0-9A-F]+-[0-9]+$")


def _stream_parallel(alias: str, workers: int, snapshot: str):
    """The same rows from ``workers`` connections at once, each in the snapshot of the
    verification and each for the chains of its share (``hashtext(chain)``), so that
    PostgreSQL renders on several cores while this thread hashes. Rows of one chain come
    from one connection in id order, which is all the walk needs.

    1. Each fetcher thread opens its own connection, joins the snapshot
       (``SET TRANSACTION SNAPSHOT``) and pages through a server-side cursor.
    2. Pages go through a small queue (memory stays bounded), then to the walk.
    """
    if not _SNAPSHOT.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    pages: queue.Queue = queue.Queue(maxsize=2 * workers)
    stop = threading.Event()
    sql = (
        f"SELECT id, chain, seq, prev_hash, hash, {_hash_ok_sql()} FROM ledger_entry "
        "WHERE (hashtext(chain) & 2147483647) %% %s = %s ORDER BY id"
    )

    def put(item) -> None:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def fetch(share: int) -> None:
        connection = connections[alias]
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                raw = connection.connection
                with raw.cursor(name=f"ledger_verify_{share}", binary=True) as rows:
                    rows.execute(sql, [workers, share])
                    while not stop.is_set() and (page := rows.fetchmany(CHUNK)):
                        put(page)
        except BaseException as exc:  # handed to the walk, which raises it
            put(exc)
        finally:
            put(None)
            connection.close()

    threads = [threading.Thread(target=fetch, args=(k,), daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    try:
        finished = 0
        while finished < workers:
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


def _stream_python(alias: str):
    """The same pages, with the canonical text rendered and hashed in Python (any database)."""
    names = ("hash", *FIELDS)
    rows = Entry.objects.using(alias).order_by("id").values_list(*names).iterator(chunk_size=CHUNK)

    def rendered():
        for row in rows:
            values = dict(zip(names, row, strict=True))
            yield (
                values["id"],
                values["chain"],
                values["seq"],
                values["prev_hash"],
                values["hash"],
                sha256(canonical(values).encode()).hexdigest() == values["hash"],
            )

    return _pages(rendered())


def verify(
    *, using: str | None = None, fast: bool | None = None, workers: int | None = None
) -> VerifyResult:
    """Verify the whole ledger in one pass; the first problem is the first bad entry.

    1. Replay the checkpoints: each one's hash, its link to the previous one, its Ed25519
       signature by a trusted key and its counts; collect every chain head they recorded.
    2. Stream the entries in id order (ids grow with seq inside a chain) and check, per
       chain, that seq is the next one, that prev_hash is the previous entry's hash and that
       hash is SHA-256 of the canonical form. On PostgreSQL the database renders the
       canonical text (``fast``), from ``workers`` connections when the ledger is large; rows
       whose text does not hash right are re-checked from their columns in Python.
    3. Check that each entry a checkpoint recorded is still there with that hash, and that
       the chain heads agree with the last entry of each chain.
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
        if fast and snapshot and workers > 1:
            pages = _stream_parallel(alias, workers, snapshot)
        elif fast:
            pages = _stream_fast(alias)
        else:
            pages = _stream_python(alias)
        heads = _walk(state.anchors, pages, result)
        _recheck_in_python(alias, result)
        result.chains = len(heads)
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


def _walk(anchors, pages, result: VerifyResult) -> dict[str, tuple[int, str, int]]:
    """The tight loop of step 2. Returns chain -> (last seq, last hash, last id); rows whose
    text does not hash right wait in ``result.suspects`` for ``_recheck_in_python``."""
    heads: dict[str, tuple[int, str, int]] = {}
    suspects = result.suspects
    count = 0
    for page in pages:
        count += len(page)
        for entry_id, chain, seq, prev_hash, digest, hash_ok in page:
            head = heads.get(chain)
            if head is None:
                want_seq, want_prev = 1, GENESIS
            else:
                want_seq, want_prev = head[0] + 1, head[1]
            if hash_ok is not True:
                suspects.append((entry_id, chain, seq, digest))
            if seq != want_seq:
                if seq > want_seq:
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
            heads[chain] = (seq, digest, entry_id)
            recorded = anchors.get(chain)
            if recorded is not None and seq in recorded:
                expected, checkpoint = recorded.pop(seq)
                if expected != digest:
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
    result.entries = count
    return heads


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
    for chain in sorted(set(heads) - set(recorded)):
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
                "first_problem": asdict(result.first_problem) if result.first_problem else None,
            },
        )
    return run
