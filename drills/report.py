"""The drill section of a rollback's report (a provider for ``reports``; None for a real
rollback): each injected fault, when it fired and what it caused — the retries after a
failure, the human a permanent failure waited for, the hand-over after a worker kill and
how long it took — and which steps were rehearsed instead of touching production."""

from __future__ import annotations

from datetime import datetime

from drills.models import Fault
from ledger.models import Entry
from rollbacks.models import Attempt, Rollback, Step


def _t(value: datetime | None) -> str:
    from reports.builder import fmt_time

    return fmt_time(value)


def _s(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 1)


def _caused(
    fault: Fault, step: Step, hits: list[Entry], entries: list[Entry]
) -> tuple[str, float | None]:
    """What a fault caused, in words, and the delay it cost (seconds) where one applies."""
    if not hits:
        return "never fired", None
    attempts = {a.number: a for a in step.attempt_list}
    hit_numbers = [h.payload.get("attempt") for h in hits]
    after = [a for n, a in attempts.items() if n > max(hit_numbers)]
    last_hit = hits[-1]
    step_entries = [e for e in entries if e.subject_type == "step" and e.subject_id == str(step.pk)]
    if fault.kind == Fault.Kind.KILL:
        parts = []
        delay = None
        for hit in hits:
            expired = next(
                (e for e in step_entries if e.action == "step.lease_expired" and e.at >= hit.at),
                None,
            )
            again = next(
                (
                    e
                    for e in step_entries
                    if e.action == "step.attempt.started"
                    and e.at > hit.at
                    and e.payload.get("attempt", 0) > hit.payload.get("attempt", 0)
                ),
                None,
            )
            delay = _s(hit.at, again.at) if again else None
            parts.append(
                f"worker {hit.payload.get('worker') or '?'} killed during attempt {hit.payload.get('attempt')} at {_t(hit.at)}"
                + (
                    f"; lease expired, the sweeper marked it lost at {_t(expired.at)} (+{_s(hit.at, expired.at)} s)"
                    if expired
                    else "; lease not yet expired"
                )
                + (
                    f"; re-dispatched: attempt {again.payload.get('attempt')} started at {_t(again.at)} on {again.payload.get('worker')}, {delay} s after the kill"
                    if again
                    else "; not re-dispatched yet"
                )
            )
        return ". ".join(parts), delay
    if fault.kind == Fault.Kind.SLOW:
        took = [
            _s(attempts[n].started_at, attempts[n].finished_at)
            for n in hit_numbers
            if n in attempts and attempts[n].finished_at
        ]
        return (
            f"attempt{'s' if len(hits) > 1 else ''} {', '.join(map(str, hit_numbers))} held up {fault.seconds:g} s"
            + (f" (took {', '.join(f'{t} s' for t in took)})" if took else ""),
            fault.seconds * len(hits),
        )
    how = "permanently" if fault.is_permanent else "transiently"
    text = f"attempt{'s' if len(hits) > 1 else ''} {', '.join(map(str, hit_numbers))} failed {how}"
    delay = None
    if fault.is_permanent:
        human = next(
            (
                e
                for e in step_entries
                if e.action in ("step.retried", "step.skipped") and e.at >= last_hit.at
            ),
            None,
        )
        if human:
            delay = _s(last_hit.at, human.at)
            text += f"; the stage halted until {human.actor.removeprefix('user:')} {'retried' if human.action == 'step.retried' else 'skipped'} it, {delay} s later"
        else:
            text += "; the stage halted, waiting for a human"
    elif after:
        first = after[0]
        delay = _s(last_hit.at, first.started_at)
        text += f"; retried {len(hits)}× with backoff, attempt {first.number} started {delay} s after the last hit"
    if after:
        text += (
            f"; then {', '.join(f'attempt {a.number} {a.get_outcome_display()}' for a in after)}"
        )
    return text, delay


def report_section(rollback: Rollback) -> dict | None:
    if not rollback.is_drill:
        return None
    from reports.sections import facts

    f = facts(rollback)
    steps = {s.pk: s for s in f.steps}
    hits_by_fault: dict[int, list[Entry]] = {}
    for e in f.entries:
        if e.action == "drill.fault.fired":
            hits_by_fault.setdefault(e.payload.get("fault"), []).append(e)
    rows = []
    for fault in Fault.objects.filter(rollback=rollback).order_by("step_id", "id"):
        step = steps[fault.step_id]
        hits = hits_by_fault.get(fault.pk, [])
        caused, delay = _caused(fault, step, hits, f.entries)
        rows.append(
            {
                "Step": step.pk,
                "System": step.system.slug,
                "Fault": fault.describe(),
                "Hits": f"{fault.fired} of {fault.times}",
                "First hit": _t(hits[0].at) if hits else "",
                "What it caused": caused,
                "Delay (s)": delay,
            }
        )
    rehearsed = sorted(
        {
            f"{s.system.slug} ({a.output['rehearsal_of']})"
            for s in f.steps
            for a in s.attempt_list
            if a.outcome == Attempt.Outcome.SUCCEEDED and (a.output or {}).get("rehearsal_of")
        }
    )
    real = sorted({s.system.slug for s in f.steps if s.system.is_rehearsal})
    summary = (
        f"A drill: {len(rows)} fault{'s' if len(rows) != 1 else ''} injected. "
        + (f"Rehearsed, nothing called: {', '.join(rehearsed)}. " if rehearsed else "")
        + (
            f"Ran for real on rehearsal targets: {', '.join(real)}."
            if real
            else "No step ran on a real target."
        )
    )
    return {
        "key": "drill",
        "title": "Drill: injected faults and what they caused",
        "summary": summary,
        "rows": rows,
    }
