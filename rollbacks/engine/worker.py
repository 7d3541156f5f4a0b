"""Worker execution: the claim rule, claiming, executing and recording one attempt, and the
starter's authority checked again before each step."""

from __future__ import annotations

import logging
import random
import threading
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import ledger.services as ledger
from metrics.events import attempt_recorded
from rollbacks import access, outbox
from rollbacks.engine.advance import advance, dispatch_due
from rollbacks.engine.base import RUN_STEP, drill_hooks, governance, locked, write_summary
from rollbacks.models import (
    Attempt,
    Outbox,
    Rollback,
    Stage,
    Step,
)

log = logging.getLogger(__name__)
S = Step.State
R = Rollback.State
tracer = trace.get_tracer("unwind.engine")

# A claim's lease, renewed every LEASE/3 while the attempt runs: a killed worker's steps are
# handed on within one lease (docs/engine.md, "Recovery").
LEASE = timedelta(seconds=settings.ENGINE_LEASE_S)
if settings.ENGINE_RUNNER:
    # With execution loops, a stage's steps dispatched together go out as one message: the
    # loop that gets it claims them all (as many as it has room for; others poll the rest).
    outbox.batched(RUN_STEP, as_task="rollbacks.tasks.run_steps", key="step_id", many="step_ids")


def executor_for(step: Step, attempt: Attempt):
    """A drill's step runs against a rehearsal target, with the drill's injected faults."""
    from rollbacks.executors import executor_for_step

    executor = executor_for_step(
        step.kind, is_drill=step.rollback.is_drill, is_rehearsal_target=step.system.is_rehearsal
    )
    hooks = drill_hooks() if step.rollback.is_drill else None
    return hooks.executor(step=step, attempt=attempt, executor=executor) if hooks else executor


# Execution ----------------------------------------------------------------------------------


def backoff(step: Step) -> timedelta:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(
        step.backoff_max_s,
        step.backoff_initial_s * step.backoff_multiplier ** max(step.attempts - 1, 0),
    )
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))


# The claim rule -------------------------------------------------------------------------------


def _own(now) -> Q:
    """The rule's conditions on the step's own row: pending or due for a retry, not manual."""
    return Q(state__in=(S.PENDING, S.RETRY_WAIT), is_manual=False) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def claimable(now=None):
    """The steps a worker may claim now — the claim rule, defined here once: pending or due
    for a retry, not manual, of a running rollback, in the stage under way (running, or
    halted on another step's failure). A step of a later stage is never claimable: the
    order invariant (SPEC §3.3). ``claim_steps`` applies it (as SQL on PostgreSQL, compiled
    from this query), and the execution loop picks its candidates with it."""
    now = now or timezone.now()
    return Step.objects.filter(
        _own(now),
        rollback__state=R.RUNNING,
        stage__state__in=(Stage.State.RUNNING, Stage.State.HALTED),
    )


def _where(queryset) -> tuple[str, list]:
    """A queryset's WHERE clause as SQL and parameters (its table named as itself)."""
    query = queryset.query
    sql, params = query.get_compiler(using=queryset.db).compile(query.where)
    return sql, list(params)


def claim_steps(ids: list[int], now) -> dict[int, tuple[int, int]]:
    """Claim those of ``ids`` that the rule allows now: running, one more attempt, a new
    fencing token, a lease. Returns {step id: (attempts, fencing token)} of those claimed.

    On PostgreSQL one ``UPDATE … RETURNING``, its conditions compiled from ``claimable``;
    the step's own conditions are repeated on the updated row itself, so that a change
    committed meanwhile (a concurrent claim, an abort) is seen when PostgreSQL re-checks the
    row it waited for. Elsewhere (SQLite, which serialises writers) the ORM's update.
    """
    if not ids:
        return {}
    if transaction.get_connection().vendor == "postgresql":
        return _claim_sql(ids, now)
    return _claim_orm(ids, now)


def _claim_sql(ids: list[int], now) -> dict[int, tuple[int, int]]:
    subquery = claimable(now).filter(pk__in=ids).order_by().values("pk")
    inner, inner_params = subquery.query.sql_with_params()
    own, own_params = _where(Step.objects.filter(_own(now)))
    table = Step._meta.db_table
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(
            f'UPDATE "{table}" SET state = %s, attempts = attempts + 1, '
            "fencing_token = fencing_token + 1, lease_expires_at = %s "
            f'WHERE {own} AND "{table}"."id" IN ({inner}) '
            "RETURNING id, attempts, fencing_token",
            [S.RUNNING, now + LEASE, *own_params, *inner_params],
        )
        return {pk: (attempts, token) for pk, attempts, token in cursor.fetchall()}


def _claim_orm(ids: list[int], now) -> dict[int, tuple[int, int]]:
    found = list(claimable(now).filter(pk__in=ids).values_list("pk", flat=True))
    if not found:
        return {}
    Step.objects.filter(pk__in=found).update(
        state=S.RUNNING,
        attempts=F("attempts") + 1,
        fencing_token=F("fencing_token") + 1,
        lease_expires_at=now + LEASE,
    )
    return {
        pk: (attempts, token)
        for pk, attempts, token in Step.objects.filter(pk__in=found).values_list(
            "pk", "attempts", "fencing_token"
        )
    }


def claim(step_id: int, worker: str, outbox_id: int | None = None) -> tuple[Step, Attempt] | None:
    """Claim the step (compare-and-set), open its attempt and ledger it, in one transaction.
    ``outbox_id``: the step's unsent outbox row, held by this worker (the fast path), marked
    sent in the same transaction as the claim."""
    now = timezone.now()
    with transaction.atomic():
        step = (
            claimable(now)
            .filter(pk=step_id)
            .select_related("rollback__started_by", "system", "forward_action")
            .first()
        )
        if step is None or refuse(step):  # not claimable; or the starter's rights are gone
            return None
        claimed = claim_steps([step_id], now)
        if step_id not in claimed:
            return None
        if outbox_id is not None:
            outbox.mark_sent([outbox_id], at=now)  # taken at the claim: no broker hop
        step.state, step.lease_expires_at = S.RUNNING, now + LEASE
        step.attempts, step.fencing_token = claimed[step_id]
        (attempt,) = open_attempts([step], worker, now)
    return step, attempt


def open_attempts(steps: list[Step], worker: str, now) -> list[Attempt]:
    """The attempts of steps just claimed (one INSERT) and their ``step.attempt.started``
    entries, in the claim's transaction."""
    attempts = Attempt.objects.bulk_create(
        [
            Attempt(
                step=step,
                number=step.attempts,
                fencing_token=step.fencing_token,
                worker=worker,
                started_at=now,
                trace_id=step.rollback.trace_id,
            )
            for step in steps
        ]
    )
    for step in steps:
        ledger.record(
            actor="worker",
            action="step.attempt.started",
            subject=step,
            rollback_id=step.rollback_id,
            trace_id=step.rollback.trace_id,
            payload={
                "attempt": step.attempts,
                "fencing_token": step.fencing_token,
                "worker": worker,
                "is_drill": step.rollback.is_drill,
            },
        )
    return attempts


# The starter's authority, checked again before each step -----------------------------------
#
# A rollback runs on the authority of whoever started it (``Rollback.started_by``: the
# operator who started it or broke the glass, or the account an alert's trigger rule started
# it as). Before each step the worker checks that the starter still holds the operator role
# and ``operate_system`` on the step's system; for a rollback an alert started without a
# human's approval, governance also checks that the policies still let an alert start it.
# When not, the step does not run: it fails, waiting for a human, with the reason, and the
# refusal is ledgered. Retrying it is refused while the reason stands.


def refusal(rollback: Rollback, systems: list) -> str:
    """Why ``rollback`` may no longer act on ``systems`` ('' when it may)."""
    starter = rollback.started_by
    why = access.operate_refusal(starter, systems) if starter else "no account answers for it"
    if not why and (gov := governance()) and hasattr(gov, "may_continue"):
        why = gov.may_continue(rollback)
    return why


def refuse(step: Step) -> bool:
    """In the worker's transaction, before it claims a claimable ``step``: True when the
    step was refused (it then fails, waiting for a human, and its stage halts)."""
    why = refusal(step.rollback, [step.system])
    if not why:
        return False
    rollback = locked(step.rollback)
    message = f"refused before it ran: {why} (it runs on the authority of who started it)"
    if Step.objects.filter(pk=step.pk, state__in=(S.PENDING, S.RETRY_WAIT)).update(
        state=S.FAILED, last_error=message, lease_expires_at=None
    ):
        ledger.record(
            actor="worker",
            action="step.refused",
            subject=step,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            outcome="refused",
            reason=why,
            payload={
                "system": step.system.slug,
                "started_by": step.rollback.started_by.get_username()
                if step.rollback.started_by
                else None,
            },
        )
        advance(rollback)
    return True


class _LeaseKeeper(threading.Thread):
    """Renews the lease while an attempt runs, so a long compensation keeps it and a killed
    worker loses it within one lease period, whatever the broker does."""

    def __init__(self, step: Step):
        super().__init__(daemon=True)
        self.step, self.stopped = step, threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopped.wait(LEASE.total_seconds() / 3):
                Step.objects.filter(
                    pk=self.step.pk, fencing_token=self.step.fencing_token, state=S.RUNNING
                ).update(lease_expires_at=timezone.now() + LEASE)
        finally:
            connection.close()


def traceparent(trace_id: str) -> tuple[str, Any]:
    parent = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def step_run(*, step_id: int, worker: str = "worker") -> str:
    """Claim, execute outside any transaction, record; then go on with a step that the
    record dispatched (the fast path). Returns what happened to ``step_id`` (for logs and
    tests).

    1. Run the step (``_run_claimed``). Its record transaction may start the next stage and
       dispatch steps; their outbox rows are committed with it, but held back from the
       broker (``outbox.holding``).
    2. When it dispatched any, claim and run the first one here, without a broker hop: the
       claim is the same compare-and-set as a worker's (order, pause, leases, the starter's
       authority) and marks the row sent in its own transaction. The others are published.
       A row this worker does not claim after all is published; if the worker dies first,
       the sweeper publishes it (it is an unsent row like any other).
    3. At most ``settings.ENGINE_INLINE_STEPS`` steps in a row, then the broker again. Not
       inside a caller's transaction (nothing would commit before the next claim).
    """
    from django.conf import settings

    budget = settings.ENGINE_INLINE_STEPS
    if transaction.get_connection().in_atomic_block:
        budget = 0
    first, outbox_id = None, None
    while True:
        held: list[Outbox] = []
        claimed = False
        try:
            with outbox.holding(RUN_STEP, held) if budget > 0 else nullcontext():
                claimed, verdict = _run_claimed(step_id, worker, outbox_id)
        finally:
            if outbox_id is not None and not claimed:
                outbox.publish([outbox_id])  # not taken here: any worker may have it
        first = verdict if first is None else first
        if not held:
            return first
        budget -= 1
        if len(held) > 1:
            outbox.send(held[1:])
        step_id, outbox_id = held[0].kwargs["step_id"], held[0].pk


def step_work(step: Step, traceparent: str):
    """What an executor gets for one attempt of ``step``."""
    from rollbacks.executors import StepWork

    return StepWork(
        kind=step.kind,
        spec=step.spec,
        idempotency_key=step.idempotency_key,
        timeout_s=step.timeout_s,
        traceparent=traceparent,
        before=step.forward_action.before,
        after=step.forward_action.after,
    )


def _run_claimed(step_id: int, worker: str, outbox_id: int | None) -> tuple[bool, str]:
    """(claimed, what happened) for one step: claim, execute, record."""
    from rollbacks.executors import ExecutorError

    claimed = claim(step_id, worker, outbox_id)
    if claimed is None:
        return False, "not claimable"
    step, attempt = claimed
    keeper = _LeaseKeeper(step)
    keeper.start()
    try:
        with tracer.start_as_current_span(
            f"compensate {step.system.slug}", context=traceparent(step.rollback.trace_id)
        ):
            headers: dict[str, str] = {}
            inject(headers)
            work = step_work(step, headers.get("traceparent", ""))
            try:
                result = executor_for(step, attempt).execute(work)
            except ExecutorError as exc:
                outcome: dict[str, Any] = {
                    "ok": False,
                    "error": str(exc),
                    "permanent": exc.permanent,
                }
            except Exception as exc:  # a bug or an unexpected driver error: never lose the step
                log.exception("step %s: unexpected error", step.pk)
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "permanent": False}
            else:
                outcome = {"ok": True, "output": result.output}
            # Outside the handlers above: an error while recording (or after its commit) is
            # not the executor's, and must not record the attempt a second time.
            return True, record(step, attempt, **outcome)
    finally:
        keeper.stopped.set()
        keeper.join(timeout=5)


def record(
    step: Step,
    attempt: Attempt,
    *,
    ok: bool,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
) -> str:
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=step.rollback_id)
        verdict = record_locked(
            rollback, step, attempt, ok=ok, output=output, error=error, permanent=permanent
        )
        if verdict != "refused":
            advance(rollback)
    return verdict


def record_locked(
    rollback: Rollback,
    step: Step,
    attempt: Attempt,
    *,
    ok: bool,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
    send_retry: bool = True,
) -> str:
    """``_record`` inside the caller's transaction, holding ``rollback``'s row lock; the
    caller runs ``advance`` afterwards (once per rollback when it records several steps).
    ``send_retry=False``: a retry gets no message of its own (an execution loop wakes itself
    at its time, and every loop claims due retries from the database)."""
    now = timezone.now()
    mine = Step.objects.filter(pk=step.pk, fencing_token=attempt.fencing_token, state=S.RUNNING)
    if ok:
        outcome, fields, verdict = (
            Attempt.Outcome.SUCCEEDED,
            {
                "state": S.SUCCEEDED,
                "finished_at": now,
                "output": output or {},
                "last_error": "",
            },
            "succeeded",
        )
    elif not permanent and step.retryable and step.attempts < step.max_attempts:
        retry_at = step.next_attempt_at = now + backoff(step)
        outcome, fields, verdict = (
            Attempt.Outcome.TRANSIENT,
            {"state": S.RETRY_WAIT, "next_attempt_at": retry_at, "last_error": error},
            "will retry",
        )
    else:
        why = (
            "permanent error"
            if permanent
            else ("not retryable" if not step.retryable else f"{step.attempts} attempts used")
        )
        outcome = Attempt.Outcome.PERMANENT if permanent else Attempt.Outcome.TRANSIENT
        fields, verdict = (
            {"state": S.FAILED, "last_error": f"{error} ({why}; waiting for a human)"},
            "failed",
        )
    if not mine.update(lease_expires_at=None, **fields):
        # Our lease expired and the step was handed to someone else: a zombie's answer.
        Attempt.objects.filter(pk=attempt.pk).update(
            outcome=Attempt.Outcome.REFUSED, finished_at=now, error=error, output=output or {}
        )
        ledger.record(
            actor="worker",
            action="step.attempt.refused",
            subject=step,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            outcome="refused",
            payload={
                "attempt": attempt.number,
                "fencing_token": attempt.fencing_token,
                "is_drill": rollback.is_drill,
            },
        )
        return "refused"
    Attempt.objects.filter(pk=attempt.pk).update(
        outcome=outcome, finished_at=now, error=error, output=output or {}
    )
    record_attempt_entry(
        rollback, step, attempt, verdict, output=output, error=error, permanent=permanent
    )
    if fields["state"] == S.RETRY_WAIT and send_retry:
        dispatch_due([(step.pk, fields["next_attempt_at"])])
    if rollback.is_terminal:  # aborted while this attempt ran: its effect still counts
        write_summary(rollback)
    return verdict


def record_attempt_entry(
    rollback: Rollback,
    step: Step,
    attempt: Attempt,
    verdict: str,
    *,
    output: dict | None = None,
    error: str = "",
    permanent: bool = False,
) -> None:
    """The ledger entry of an attempt's result (``step.attempt.succeeded`` / ``.failed``)."""
    ok = verdict == "succeeded"
    ledger.record(
        actor="worker",
        action=f"step.attempt.{'succeeded' if ok else 'failed'}",
        subject=step,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        outcome="ok" if ok else "failed",
        reason=error,
        payload={
            "attempt": attempt.number,
            "verdict": verdict,
            "output": output or {},
            "permanent": permanent,
            "is_drill": rollback.is_drill,
            # When the next attempt is due: how late it ran is measured against this.
            **({"retry_at": step.next_attempt_at.isoformat()} if verdict == "will retry" else {}),
        },
    )
    attempt_recorded(step, attempt, verdict)
