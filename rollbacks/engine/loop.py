"""The execution loop: many steps in flight per worker process (docs/execution.md).

Each Celery prefork pool process starts one ``Runner`` (``config/celery.py``,
``worker_process_init``). The ``run_step`` task only hands its step id to it and returns,
so a step waiting on its target holds no pool process. The loop:

1. **Claims** in one transaction as many due steps as it has free slots
   (``ENGINE_STEPS_IN_FLIGHT``): the steps its messages named first, then any other due step
   of a running stage — so a lost message, or one sent to a busy worker, never strands a
   step. The claim is the engine's compare-and-set (pending or due for a retry, not manual,
   its rollback running, its stage under way), taken under one advisory lock so that the
   per-system limit (``System.max_in_flight``) holds across workers. The starter's
   authority is checked again per rollback; the attempts and their ledger entries are
   written in the same transaction.
2. **Executes** each claimed step as an asyncio task: HTTP, flag and simulated steps on
   ``httpx.AsyncClient`` pools of 8 connections each; blocking ones (SQL, a drill's faults)
   on a small thread pool (``ENGINE_SYNC_THREADS``). A target that hangs holds one slot until its timeout,
   and nothing else.
3. **Records** the results that finished meanwhile in one transaction (the rollbacks'
   rows locked in id order, each step's fencing-token compare-and-set, ``advance`` once
   per rollback). The steps that record dispatches and that are due at once are claimed by
   this loop itself (their outbox rows marked sent in the claim); the others go out.
4. Renews the leases of its steps every third of a lease on a thread of its own, and hands
   on any step whose lease expired (a killed worker's) every second.

Database work runs on two threads of its own (records on one, claims on the other, each
with its connection; one thread on SQLite), never on the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from opentelemetry.propagate import inject

import ledger.services as ledger
from rollbacks import access, outbox
from rollbacks.engine import worker as execution
from rollbacks.engine.advance import advance
from rollbacks.engine.base import RUN_STEP, governance, write_summary
from rollbacks.engine.sweeper import expire_leases
from rollbacks.engine.worker import claimable, refusal, refuse
from rollbacks.models import Attempt, Outbox, Rollback, Step, System

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State
CLAIM_LOCK = 0x756E77696E64  # pg_advisory_xact_lock key of the claim ("unwind")
LEASE_CHECK_S = 1.0  # how often a loop hands on steps whose lease expired
HTTP_CONNECTIONS_PER_POOL = 8

_current: Runner | None = None


def current() -> Runner | None:
    """This process's running loop, if it has one."""
    return _current if _current is not None and _current.is_alive() else None


def start(*, worker: str) -> Runner:
    """Start this process's loop (a pool process, after the fork)."""
    global _current
    _current = Runner(worker=worker)
    _current.start()
    return _current


# Claim ----------------------------------------------------------------------------------------

# The candidates of a claim: the claim rule's steps (``claimable``), the hinted ones first,
# then the retries that are due (they run at their time, ahead of fresh work), then by
# when they became due, at most ``max_in_flight`` running per system. Only the steps of
# systems with a limit are numbered per system (a window over every due step cost more than
# the rest of the claim once thousands were due); the others are cut to ``limit`` at once.
_PG_CANDIDATES = """
WITH base (id, system_id, max_in_flight, next_attempt_at, dispatched_at) AS ({claimable}),
cand AS (
    SELECT id, system_id, max_in_flight AS cap, (id = ANY(%s)) AS hinted,
           (next_attempt_at IS NOT NULL) AS retry,
           coalesce(next_attempt_at, dispatched_at) AS due
    FROM base
),
free AS (
    SELECT id, hinted, retry, due FROM cand WHERE cap IS NULL
    ORDER BY hinted DESC, retry DESC, due NULLS FIRST, id
    LIMIT %s
),
capped AS (
    SELECT id, system_id, cap, hinted, retry, due,
           row_number() OVER (
               PARTITION BY system_id ORDER BY hinted DESC, retry DESC, due, id
           ) AS nth
    FROM cand WHERE cap IS NOT NULL
),
busy AS (
    SELECT system_id, count(*) AS running FROM {step}
    WHERE state = %s AND system_id IN (SELECT system_id FROM capped)
    GROUP BY system_id
)
SELECT id FROM (
    SELECT id, hinted, retry, due FROM free
    UNION ALL
    SELECT c.id, c.hinted, c.retry, c.due FROM capped c LEFT JOIN busy b ON b.system_id = c.system_id
    WHERE c.nth <= c.cap - coalesce(b.running, 0)
) AS picked
ORDER BY hinted DESC, retry DESC, due NULLS FIRST, id
LIMIT %s
"""


def _candidates(hints: list[int], limit: int, now) -> list[int]:
    """Run under the claim's advisory lock, taken by an earlier statement of the same
    transaction: this statement's snapshot then sees every claim committed before it."""
    base, params = (
        claimable(now)
        .order_by()
        .values("pk", "system_id", "system__max_in_flight", "next_attempt_at", "dispatched_at")
        .query.sql_with_params()
    )
    sql = _PG_CANDIDATES.format(claimable=base, step=Step._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, hints, limit, S.RUNNING, limit])
        return [row[0] for row in cursor.fetchall()]


@dataclass
class Claimed:
    step: Step
    attempt: Attempt
    executor: Any
    started: float = field(default_factory=time.monotonic)


def _refused(steps: list[Step]) -> set[int]:
    """The steps whose rollback's starter may no longer act on their system (``worker.refusal``).

    Asked once per starter for every system of this batch (the role and the object
    permissions: two queries however many rollbacks they started), then governance's word
    per rollback; only when that refuses, per rollback and per step (``refuse`` fails the
    step, waiting for a human, and ledgers why)."""
    refused: set[int] = set()
    by_rollback: dict[int, list[Step]] = {}
    for step in steps:
        by_rollback.setdefault(step.rollback_id, []).append(step)
    by_starter: dict[int | None, list[list[Step]]] = {}
    for group in by_rollback.values():
        by_starter.setdefault(group[0].rollback.started_by_id, []).append(group)
    gov = governance()
    for starter_id, groups in by_starter.items():
        systems = list({s.system_id: s.system for g in groups for s in g}.values())
        starter = groups[0][0].rollback.started_by
        may_operate = starter_id is not None and not access.operate_refusal(starter, systems)
        for group in groups:
            rollback = group[0].rollback
            if may_operate and not (
                gov and hasattr(gov, "may_continue") and gov.may_continue(rollback)
            ):
                continue
            if not refusal(rollback, list({s.system_id: s.system for s in group}.values())):
                continue
            for step in group:
                if refuse(step):
                    refused.add(step.pk)
    return refused


def claim_batch(*, hints: dict[int, int | None], limit: int, worker: str) -> list[Claimed]:
    """Claim up to ``limit`` due steps, the hinted ones first (step id -> the outbox row
    this loop holds for it, marked sent in the claim). One transaction."""
    if limit <= 0:
        return []
    if connection.vendor != "postgresql":
        return _claim_one_by_one(hints=hints, limit=limit, worker=worker)
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:  # claims one at a time: max_in_flight holds
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CLAIM_LOCK])
        ids = _candidates(list(hints), limit, now)
        if not ids:
            return []
        steps = list(
            Step.objects.filter(pk__in=ids).select_related(
                "rollback__started_by", "system", "forward_action"
            )
        )
        refused = _refused(steps)
        ids = [s.pk for s in steps if s.pk not in refused]
        if not ids:
            return []
        claimed = execution.claim_steps(ids, now)
        # In rollback order, as the ledger's chains are taken (ledger/services.py).
        steps = sorted((s for s in steps if s.pk in claimed), key=lambda s: (s.rollback_id, s.pk))
        for step in steps:
            step.state, step.lease_expires_at = S.RUNNING, now + execution.LEASE
            step.attempts, step.fencing_token = claimed[step.pk]
        with ledger.deferred():  # one round trip for the entries of every chain
            attempts = execution.open_attempts(steps, worker, now)
        sent = [hints[s.pk] for s in steps if hints.get(s.pk)]
        if sent:
            outbox.mark_sent(sent, at=now)  # taken at the claim: no broker hop
        return [
            Claimed(step, attempt, execution.executor_for(step, attempt))
            for step, attempt in zip(steps, attempts, strict=True)
        ]


def _claim_one_by_one(*, hints: dict[int, int | None], limit: int, worker: str) -> list[Claimed]:
    """SQLite (the embedded demo): the engine's own claim, one step after another. The
    candidates are the hinted steps, then the first ``limit`` due steps of systems without
    a limit and, of each limited system, as many as it has room for (so steps of a system
    at its limit never crowd out the others')."""
    now = timezone.now()
    caps = dict(System.objects.exclude(max_in_flight=None).values_list("pk", "max_in_flight"))
    running = Counter(
        Step.objects.filter(state=S.RUNNING, system_id__in=caps).values_list("system_id", flat=True)
    )
    order = (F("next_attempt_at").asc(nulls_last=True), "dispatched_at", "pk")
    due = claimable(now).exclude(pk__in=list(hints)).order_by(*order)
    fields = ("pk", "system_id", "next_attempt_at", "dispatched_at")
    rows = list(due.exclude(system_id__in=caps).values_list(*fields)[:limit])
    for system_id, cap in caps.items():
        if cap > running[system_id]:
            rows += due.filter(system_id=system_id).values_list(*fields)[: cap - running[system_id]]
    far = timezone.now() + timedelta(days=36500)  # nulls last, as ``order``
    rows.sort(key=lambda r: (r[2] or far, r[3] or far, r[0]))
    hinted = list(Step.objects.filter(pk__in=list(hints)).values_list("pk", "system_id"))
    out: list[Claimed] = []
    for step_id, system_id, *_ in [*hinted, *rows]:
        if len(out) >= limit:
            break
        if system_id in caps and running[system_id] >= caps[system_id]:
            continue
        claimed = execution.claim(step_id, worker, hints.get(step_id))
        if claimed is not None:
            running[system_id] += 1
            step, attempt = claimed
            out.append(Claimed(step, attempt, execution.executor_for(step, attempt)))
    return out


# Record ---------------------------------------------------------------------------------------


@dataclass
class Result:
    claimed: Claimed
    outcome: dict[str, Any]
    verdict: str = ""


def record_batch(results: list[Result]) -> None:
    """Record finished attempts in one transaction: lock their rollbacks in id order, apply
    each step's compare-and-set (the successes together, in two statements), then advance
    each rollback once. The ledger entries are written together. Sets ``result.verdict``."""
    ids = sorted({r.claimed.step.rollback_id for r in results})
    with transaction.atomic(), ledger.deferred():
        locked = {
            rb.pk: rb
            for rb in Rollback.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        }
        ordered = sorted(results, key=lambda r: (r.claimed.step.rollback_id, r.claimed.step.pk))
        succeeded = _record_successes([r for r in ordered if r.outcome.get("ok")])
        retrying = _record_retries([r for r in ordered if _will_retry(r)])
        moved: set[int] = set()
        for result in ordered:
            step = result.claimed.step
            if step.pk in succeeded or step.pk in retrying:
                result.verdict = "succeeded" if step.pk in succeeded else "will retry"
                execution.record_attempt_entry(
                    locked[step.rollback_id],
                    step,
                    result.claimed.attempt,
                    result.verdict,
                    output=result.outcome.get("output"),
                    error=result.outcome.get("error", ""),
                )
            else:  # a failure for a human, or an answer whose lease was lost (refused there)
                result.verdict = execution.record_locked(
                    locked[step.rollback_id],
                    step,
                    result.claimed.attempt,
                    send_retry=False,
                    **result.outcome,
                )
            if result.verdict != "refused":
                moved.add(step.rollback_id)
        for pk in ids:
            if pk in moved:
                if locked[pk].is_terminal:  # aborted while its attempts ran: they still count
                    write_summary(locked[pk])
                advance(locked[pk])


def _will_retry(result: Result) -> bool:
    """A transient failure with attempts left (``record_locked``'s rule for a retry)."""
    step, outcome = result.claimed.step, result.outcome
    return (
        not outcome.get("ok")
        and not outcome.get("permanent")
        and step.retryable
        and step.attempts < step.max_attempts
    )


def _update_from_values(
    cursor,
    table: str,
    assignments: str,
    columns: list[tuple[str, str]],
    rows: list[tuple],
    *,
    set_params: tuple = (),
    where: str = "",
    where_params: tuple = (),
) -> set[int]:
    """``UPDATE table AS t SET … FROM (VALUES …) AS v(id, …) WHERE t.id = v.id …`` for many
    rows in one statement; ``columns`` name v's columns and their types. Returns the ids
    it updated."""
    row_sql = "(" + ", ".join(f"%s::{kind}" for _, kind in columns) + ")"
    names = ", ".join(name for name, _ in columns)
    cursor.execute(
        f"UPDATE {table} AS t SET {assignments} "
        f"FROM (VALUES {', '.join(row_sql for _ in rows)}) AS v({names}) "
        f"WHERE t.id = v.id {where} RETURNING t.id",
        [*set_params, *[x for row in rows for x in row], *where_params],
    )
    return {row[0] for row in cursor.fetchall()}


def _record_together(
    results: list[Result],
    *,
    state: str,
    outcome: str,
    step_rows,
    step_set: str,
    step_columns,
    step_params: tuple = (),
) -> set[int]:
    """Move these steps (still holding their fencing token) to ``state`` and close their
    attempts with ``outcome``, in one UPDATE each; returns the steps it moved."""
    now = timezone.now()
    with connection.cursor() as cursor:
        moved = _update_from_values(
            cursor,
            Step._meta.db_table,
            f"state = %s, {step_set}, lease_expires_at = NULL",
            [("id", "bigint"), ("token", "bigint"), *step_columns],
            [(r.claimed.step.pk, r.claimed.attempt.fencing_token, *step_rows(r)) for r in results],
            set_params=(state, *step_params),
            where="AND t.fencing_token = v.token AND t.state = %s",
            where_params=(S.RUNNING,),
        )
        closed = [r for r in results if r.claimed.step.pk in moved]
        if closed:
            _update_from_values(
                cursor,
                Attempt._meta.db_table,
                "outcome = %s, finished_at = %s, error = v.error, output = v.output",
                [("id", "bigint"), ("error", "text"), ("output", "jsonb")],
                [
                    (
                        r.claimed.attempt.pk,
                        r.outcome.get("error", ""),
                        json.dumps(r.outcome.get("output") or {}),
                    )
                    for r in closed
                ],
                set_params=(outcome, now),
            )
    for r in closed:
        r.claimed.step.state = state
    return moved


def _record_retries(results: list[Result]) -> set[int]:
    """The transient failures with attempts left, on PostgreSQL: to ``retry_wait`` at their
    backoff (one UPDATE of the steps, one of their attempts); returns the steps it moved,
    each with its ``next_attempt_at`` set. No message is sent: the loop wakes itself at the
    retry's time, and every loop claims due retries."""
    if not results or connection.vendor != "postgresql":
        return set()
    now = timezone.now()
    due = {r.claimed.step.pk: now + execution.backoff(r.claimed.step) for r in results}
    moved = _record_together(
        results,
        state=S.RETRY_WAIT,
        outcome=Attempt.Outcome.TRANSIENT,
        step_rows=lambda r: (due[r.claimed.step.pk], r.outcome["error"]),
        step_set="next_attempt_at = v.at, last_error = v.error",
        step_columns=[("at", "timestamptz"), ("error", "text")],
    )
    for r in results:
        if r.claimed.step.pk in moved:
            r.claimed.step.next_attempt_at = due[r.claimed.step.pk]
    return moved


def _record_successes(results: list[Result]) -> set[int]:
    """The succeeded attempts on PostgreSQL (one UPDATE of the steps, one of their
    attempts); returns the steps it moved. Elsewhere (and for the rest)
    ``execution.record_locked`` does it step by step."""
    if not results or connection.vendor != "postgresql":
        return set()
    return _record_together(
        results,
        state=S.SUCCEEDED,
        outcome=Attempt.Outcome.SUCCEEDED,
        step_rows=lambda r: (json.dumps(r.outcome.get("output") or {}),),
        step_set="finished_at = %s, output = v.output, last_error = ''",
        step_columns=[("output", "jsonb")],
        step_params=(timezone.now(),),
    )


def record_each(results: list[Result]) -> None:
    """``record_batch`` one result at a time (after a batch failed: one bad record must
    not keep the others from being recorded)."""
    for result in results:
        try:
            result.verdict = execution.record(
                result.claimed.step, result.claimed.attempt, **result.outcome
            )
        except Exception:
            log.exception("step %s: could not record its attempt", result.claimed.step.pk)
            result.verdict = "unrecorded"  # its lease expires and the sweeper hands it on


# Leases ---------------------------------------------------------------------------------------


class _LeaseRenewer(threading.Thread):
    """Renews the leases of every step the loop has in flight, in one UPDATE, every third
    of a lease — on its own thread and connection, so a long batch cannot starve it."""

    def __init__(self, inflight: Callable[[], list[tuple[int, int]]]):
        super().__init__(daemon=True, name="unwind-lease")
        self.inflight, self.stopped = inflight, threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(execution.LEASE.total_seconds() / 3):
                pairs = self.inflight()
                if not pairs:
                    continue
                match = Q()
                for pk, token in pairs:
                    match |= Q(pk=pk, fencing_token=token)
                try:
                    Step.objects.filter(match, state=S.RUNNING).update(
                        lease_expires_at=timezone.now() + execution.LEASE
                    )
                except Exception:  # the database is away: try again next time
                    log.exception("lease renewal failed")
                    connections["default"].close()
        finally:
            connections.close_all()


# The loop -------------------------------------------------------------------------------------


class Runner:
    """One per worker process; see the module docstring."""

    def __init__(self, *, worker: str, capacity: int | None = None):
        self.worker = worker
        self.capacity = capacity or settings.ENGINE_STEPS_IN_FLIGHT
        self.poll_s = settings.ENGINE_POLL_MS / 1000
        self._hints: dict[int, int | None] = {}
        self._hint_lock = threading.Lock()
        self._inflight: dict[int, Claimed] = {}
        self._done: list[Result] = []
        self._stopping = False
        self._look = False
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._db = ThreadPoolExecutor(1, thread_name_prefix="unwind-db")
        # Claims on a thread (and connection) of their own on PostgreSQL, so a claim — of a
        # retry that fell due, of the next stage's step — never waits for a record batch.
        # SQLite takes one writer at a time: there, claims queue behind records.
        self._claims = (
            ThreadPoolExecutor(1, thread_name_prefix="unwind-claim")
            if connections["default"].vendor == "postgresql"
            else self._db
        )
        self._sync = ThreadPoolExecutor(
            settings.ENGINE_SYNC_THREADS, thread_name_prefix="unwind-step"
        )
        self._thread = threading.Thread(target=self._run, daemon=True, name="unwind-runner")
        self._renewer = _LeaseRenewer(self._leases)

    # Called from other threads ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._renewer.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def nudge(self, step_id: int | None = None) -> None:
        """A message named this step (or only says: look for due work). A message's outbox
        row was marked sent when it was published, so the hint holds none."""
        if step_id is not None:
            with self._hint_lock:
                self._hints.setdefault(step_id, None)
        self._loop.call_soon_threadsafe(self._poke)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let the steps in flight finish and be recorded (up to ``timeout``)."""
        if not self.is_alive():
            return
        self._loop.call_soon_threadsafe(self._begin_stop)
        self._thread.join(timeout)
        self._renewer.stopped.set()

    # On the loop --------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _retry_due(self) -> None:
        self._look = True
        self._poke()

    def _begin_stop(self) -> None:
        self._stopping = True
        self._poke()

    def _leases(self) -> list[tuple[int, int]]:
        return [(c.step.pk, c.step.fencing_token) for c in list(self._inflight.values())]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            for pool in {self._db, self._claims}:
                pool.submit(connections.close_all).result(timeout=5)
            self._loop.close()

    async def _on_db(self, fn, /, *args, _pool=None, **kwargs):
        def call():
            # What Django does around each request, here around each batch: a connection
            # that an error left unusable, or that is too old, is replaced.
            for conn in connections.all(initialized_only=True):
                conn.close_if_unusable_or_obsolete()
            return fn(*args, **kwargs)

        return await self._loop.run_in_executor(_pool or self._db, call)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        # Several small pools, not one: httpcore looks over every connection of its pool for
        # each request (is it idle, has it expired: a system call each), so one pool of 64
        # connections cost more CPU than the requests themselves (py-spy: 60 % of the loop
        # thread's time in that look).
        pools = max(1, self.capacity // HTTP_CONNECTIONS_PER_POOL)
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=HTTP_CONNECTIONS_PER_POOL
        )
        async with contextlib.AsyncExitStack() as stack:
            self.clients = [
                await stack.enter_async_context(httpx.AsyncClient(limits=limits))
                for _ in range(pools)
            ]
            await self._serve()

    async def _serve(self) -> None:
        next_lease_check = 0.0
        poll = True  # look for due work at once: messages may have gone before we started
        recording: asyncio.Future | None = None  # the record batch under way, if any
        while True:
            if recording is not None and recording.done():
                if not recording.cancelled() and recording.exception() is not None:
                    log.error("recording a batch failed", exc_info=recording.exception())
                recording = None
                poll = True  # a record may have dispatched steps
            if self._done and recording is None:
                # Recorded on the database thread while claims go on on theirs.
                recording = asyncio.ensure_future(self._record(self._done))
                recording.add_done_callback(lambda _: self._poke())
            if self._stopping:
                if not self._inflight and recording is None:
                    break
            elif time.monotonic() >= next_lease_check:
                try:
                    if await self._on_db(expire_leases):
                        poll = True
                except Exception:
                    log.exception("expire_leases failed")
                next_lease_check = time.monotonic() + LEASE_CHECK_S
            if not self._stopping:
                poll, self._look = poll or self._look, False  # a retry fell due
                with self._hint_lock:
                    hints, self._hints = self._hints, {}
                if (hints or poll) and len(self._inflight) < self.capacity:
                    poll = await self._claim(hints)
                else:
                    self._publish_held(hints)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                poll = True
            self._wake.clear()

    async def _claim(self, hints: dict[int, int | None]) -> bool:
        """Claim what fits; True when the loop is full (there may be more due work)."""
        free = self.capacity - len(self._inflight)
        try:
            claimed = await self._on_db(
                claim_batch, hints=hints, limit=free, worker=self.worker, _pool=self._claims
            )
        except Exception:
            log.exception("claim failed")
            claimed = []
        taken = {c.step.pk for c in claimed}
        self._publish_held({pk: ob for pk, ob in hints.items() if pk not in taken})
        for c in claimed:
            self._inflight[c.step.pk] = c
            asyncio.ensure_future(self._execute(c))
        return len(claimed) >= free

    def _publish_held(self, hints: dict[int, int | None]) -> None:
        """Outbox rows this loop held but did not claim: send them, any worker may have them."""
        held = [ob for ob in hints.values() if ob]
        if held:
            self._db.submit(outbox.publish, held)

    async def _execute(self, c: Claimed) -> None:
        step = c.step
        try:
            with execution.tracer.start_as_current_span(
                f"compensate {step.system.slug}",
                context=execution.traceparent(step.rollback.trace_id),
            ):
                headers: dict[str, str] = {}
                inject(headers)
                work = execution.step_work(step, headers.get("traceparent", ""))
                outcome = await self._call(c.executor, work, step.pk)
        except Exception as exc:  # never lose the step
            log.exception("step %s: unexpected error", step.pk)
            outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "permanent": False}
        self._done.append(Result(c, outcome))
        self._poke()

    async def _call(self, executor, work, step_id: int = 0) -> dict[str, Any]:
        from rollbacks.executors import ExecutorError

        try:
            if hasattr(executor, "execute_async"):
                # The executor's own timeout applies; this one only guards against a bug.
                result = await asyncio.wait_for(
                    executor.execute_async(work, self.clients[step_id % len(self.clients)]),
                    timeout=work.timeout_s * 2 + 5,
                )
            else:
                result = await self._loop.run_in_executor(self._sync, executor.execute, work)
        except ExecutorError as exc:
            return {"ok": False, "error": str(exc), "permanent": exc.permanent}
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {work.timeout_s}s", "permanent": False}
        except Exception as exc:  # a bug or an unexpected driver error: retried
            log.exception("executor %s failed", type(executor).__name__)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "permanent": False}
        return {"ok": True, "output": result.output}

    async def _record(self, done: list[Result]) -> None:
        batch, self._done = list(done), []
        held: list[Outbox] = []

        def record() -> None:
            hold = outbox.holding(RUN_STEP, held) if settings.ENGINE_INLINE_STEPS else None
            try:
                if hold is not None:
                    with hold:
                        record_batch(batch)
                else:
                    record_batch(batch)
            except Exception:
                log.exception("recording %s results together failed; one by one", len(batch))
                held.clear()
                record_each(batch)

        await self._on_db(record)
        for result in batch:
            self._inflight.pop(result.claimed.step.pk, None)
            step = result.claimed.step
            if result.verdict == "will retry" and step.next_attempt_at:
                delay = max(0.0, (step.next_attempt_at - timezone.now()).total_seconds())
                self._loop.call_later(delay, self._retry_due)
        if held:
            with self._hint_lock:
                for row in held:
                    self._hints[row.kwargs["step_id"]] = row.pk
