"""The built-in sections of a rollback's report (see ``reports/builder.py``).

Each is a provider ``(rollback) -> dict | None``. They read the rollback's ledger entries
(its chain: every decision, transition and attempt, with who, when and why) and its
stages, steps and attempts, loaded once per report and shared through ``facts()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.utils import timezone

from ledger.models import Entry
from reports.builder import fmt_time, seconds_between
from rollbacks import outcome
from rollbacks.models import Attempt, Rollback, Stage, Step

R = Rollback.State


@dataclass
class Facts:
    entries: list[Entry]
    stages: list[Stage]
    steps: list[Step]

    def step(self, pk: Any) -> Step | None:
        return next((s for s in self.steps if str(s.pk) == str(pk)), None)


def facts(rollback: Rollback) -> Facts:
    """The rollback's entries, stages, steps and attempts, loaded once per report."""
    cached = getattr(rollback, "_report_facts", None)
    if cached is None:
        entries = list(Entry.objects.filter(rollback_id=rollback.pk).order_by("at", "id"))
        stages = list(Stage.objects.filter(rollback=rollback).order_by("index"))
        steps = list(
            Step.objects.filter(rollback=rollback)
            .select_related("system", "forward_action", "stage")
            .prefetch_related(
                Prefetch(
                    "attempt_set",
                    queryset=Attempt.objects.order_by("number"),
                    to_attr="attempt_list",
                )
            )
            .order_by("stage__index", "id")
        )
        cached = rollback._report_facts = Facts(entries, stages, steps)
    return cached


def _who(entry: Entry) -> str:
    return entry.actor.removeprefix("user:")


# Summary and metrics -------------------------------------------------------------------------


def _outcome(rollback: Rollback) -> str:
    """The engine's outcome summary, in a drill's words when it is one (rehearsed, not
    undone, unless steps ran on rehearsal targets)."""
    if not rollback.is_terminal:
        return rollback.outcome_summary
    steps = facts(rollback).steps
    ran_for_real = any(s.system.is_rehearsal and not s.is_manual for s in steps)
    return outcome.in_words(rollback, ran_for_real=ran_for_real)


def summary(rollback: Rollback) -> dict:
    run = rollback.run
    rows = [
        ("Rollback", f"#{rollback.pk}"),
        ("Drill", "yes: a rehearsal against rehearsal targets" if rollback.is_drill else "no"),
        ("Process run", f"{run} (failed {fmt_time(run.failed_at)})" if run.failed_at else str(run)),
        ("Why the run failed", run.failure_reason),
        (
            "Requested by",
            rollback.requested_by.get_username()
            if rollback.requested_by
            else "an automated trigger",
        ),
        ("Trigger", rollback.trigger),
        ("Reason", rollback.reason),
        ("State", rollback.get_state_display()),
        ("Planned", fmt_time(rollback.created_at)),
        ("Started", fmt_time(rollback.started_at)),
        ("Finished", fmt_time(rollback.finished_at)),
        (
            "Dependency map",
            f"v{rollback.dependency_map.version}" if rollback.dependency_map else "none",
        ),
        ("Outcome", _outcome(rollback)),
        ("Trace id", rollback.trace_id),
    ]
    return {
        "key": "summary",
        "title": "Summary",
        "rows": [{"Field": k, "Value": v} for k, v in rows],
    }


def _first(
    entries: list[Entry], action: str, after: datetime | None = None, **payload
) -> Entry | None:
    for e in entries:
        if (
            e.action == action
            and (after is None or e.at >= after)
            and all(e.payload.get(k) == v for k, v in payload.items())
        ):
            return e
    return None


def metrics(rollback: Rollback) -> dict:
    """Time to approval, to start, the duration and the time to recover from the failure."""
    f = facts(rollback)
    submitted = _first(f.entries, "rollback.submitted")
    approved = _first(f.entries, "rollback.approved")
    # The same figure as the metrics page's (one definition, in the rollbacks app).
    timed = Rollback.objects.with_time_to_approval().values("needed_approval", "time_to_approval")
    waited = timed.get(pk=rollback.pk)
    if submitted and not waited["needed_approval"]:
        approval, approval_note = 0.0, "no approval was required: " + submitted.reason
    elif waited["time_to_approval"] is not None:
        approval = round(waited["time_to_approval"].total_seconds(), 1)
        approval_note = "from planning to the approval that completed the policy"
    else:
        approval, approval_note = None, "not approved"
    attempts = [a for s in f.steps for a in s.attempt_list]
    failed_at = rollback.run.failed_at
    rows = [
        ("Time to approval", approval, approval_note),
        (
            "Time to start",
            seconds_between(
                approved.at if approved else (submitted.at if submitted else None),
                rollback.started_at,
            ),
            "from approval to start",
        ),
        (
            "Duration",
            seconds_between(rollback.started_at, rollback.finished_at),
            "from start to finish",
        ),
        (
            "Time to recover (MTTR)",
            seconds_between(failed_at, rollback.finished_at),
            "from the run's failure to the end of its rollback",
        ),
        ("Attempts", len(attempts), "step attempts, all outcomes"),
        (
            "Retries",
            sum(max(0, len(s.attempt_list) - 1) for s in f.steps),
            "attempts after a step's first",
        ),
        (
            "Lost attempts",
            sum(a.outcome == Attempt.Outcome.LOST for a in attempts),
            "a worker stopped answering",
        ),
    ]
    return {
        "key": "metrics",
        "title": "Metrics of this incident",
        "summary": "Times in seconds. A drill's figures stay out of the production metrics.",
        "rows": [
            {"Metric": m, "Value": v if v is not None else "—", "Measured": how}
            for m, v, how in rows
        ],
    }


# Decisions ---------------------------------------------------------------------------------

DECISIONS = {
    "rollback.planned": "requested the rollback",
    "policy.applied": "approval policy applied",
    "rollback.submitted": "submitted to the approval policies",
    "approval.given": "approved",
    "approval.revoked": "revoked an approval",
    "rollback.rejected": "rejected",
    "rollback.approved": "approval complete",
    "rollback.approval_lapsed": "approval lapsed",
    "rollback.break_glass": "broke the glass",
    "break_glass.reviewed": "reviewed the break-glass",
    "stage.gate_opened": "opened a stage gate",
    "rollback.started": "started",
    "rollback.paused": "paused",
    "rollback.resumed": "resumed",
    "rollback.aborted": "aborted",
    "step.retried": "retried a step",
    "step.skipped": "skipped a step",
    "step.resolved": "resolved a manual step",
    "drill.fault.added": "injected a fault",
    "drill.fault.removed": "removed a fault",
}


def _details(e: Entry) -> str:
    p = e.payload or {}
    parts = []
    if e.action == "approval.given" and p.get("attestations"):
        parts += [f"attestation {k}: {v}" for k, v in sorted(p["attestations"].items())]
    if e.action == "rollback.planned":
        parts.append(f"{p.get('steps')} steps in {len(p.get('stages') or [])} stages")
        if p.get("is_drill"):
            parts.append("a drill")
    if e.action == "stage.gate_opened":
        parts.append(f"stage {p.get('stage')}")
    if e.subject_type == "step":
        parts.append(f"step #{e.subject_id}")
    if e.action == "policy.applied" and p.get("policies"):
        parts.append("policies: " + ", ".join(map(str, p["policies"])))
        parts.append(f"{p.get('approvals', 0)} approval(s) required")
        if p.get("gate_tiers"):
            parts.append("gates on tiers " + ", ".join(map(str, p["gate_tiers"])))
    return "; ".join(parts)


def decisions(rollback: Rollback) -> dict:
    rows = []
    for e in facts(rollback).entries:
        if e.outcome == "refused":
            what = f"was refused: {e.action}"
        elif e.action in DECISIONS:
            what = DECISIONS[e.action]
        else:
            continue
        rows.append(
            {
                "At": fmt_time(e.at),
                "Who": _who(e),
                "Decision": what,
                "Why": e.reason,
                "Details": _details(e),
            }
        )
    return {
        "key": "decisions",
        "title": "Decisions: who and why",
        "summary": "Every request, approval, rejection, break-glass, review, operator action and refusal, from the ledger.",
        "rows": rows,
    }


# Stages and steps ----------------------------------------------------------------------------


def stages(rollback: Rollback) -> dict:
    f = facts(rollback)
    rows = [
        {
            "Stage": "whole rollback",
            "State": rollback.get_state_display(),
            "Started": fmt_time(rollback.started_at),
            "Finished": fmt_time(rollback.finished_at),
            "Duration (s)": seconds_between(rollback.started_at, rollback.finished_at),
            "Steps": len(f.steps),
        }
    ]
    for st in f.stages:
        rows.append(
            {
                "Stage": st.index,
                "State": st.get_state_display(),
                "Started": fmt_time(st.started_at),
                "Finished": fmt_time(st.finished_at),
                "Duration (s)": seconds_between(st.started_at, st.finished_at),
                "Steps": sum(s.stage_id == st.pk for s in f.steps),
            }
        )
    return {"key": "stages", "title": "Timings per stage", "rows": rows}


def _attempts_text(step: Step) -> str:
    counts: dict[str, int] = {}
    for a in step.attempt_list:
        counts[a.get_outcome_display()] = counts.get(a.get_outcome_display(), 0) + 1
    return ", ".join(f"{n} {label}" for label, n in counts.items()) or "none"


def _ran_as(step: Step) -> str:
    last = step.attempt_list[-1] if step.attempt_list else None
    rehearsed = last and (last.output or {}).get("rehearsal_of")
    return f"rehearsed (simulated {rehearsed})" if rehearsed else step.kind


def steps(rollback: Rollback) -> dict:
    rows = [
        {
            "Step": s.pk,
            "Stage": s.stage.index,
            "System": s.system.slug,
            "Undoes": s.forward_action.action_type,
            "Ran as": _ran_as(s),
            "Outcome": s.get_state_display(),
            "Attempts": _attempts_text(s),
            "Note or error": s.human_note
            or s.last_error
            or (s.manual_reason if s.is_manual else ""),
        }
        for s in facts(rollback).steps
    ]
    return {"key": "steps", "title": "Outcome per step", "rows": rows}


# Waits ---------------------------------------------------------------------------------------


def _wait(where: str, what: str, start: datetime, end: Entry | None) -> dict:
    until = end.at if end else None
    return {
        "Where": where,
        "Waiting for": what,
        "From": fmt_time(start),
        "Until": fmt_time(until) if end else "still waiting",
        "Waited (s)": seconds_between(start, until or timezone.now()),
        "Ended by": (f"{_who(end)}: {DECISIONS.get(end.action, end.action)}" if end else ""),
    }


def _next(
    entries: list[Entry],
    after: datetime,
    actions: tuple[str, ...],
    subject: tuple[str, str] | None = None,
) -> Entry | None:
    for e in entries:
        if e.at < after or e.action not in actions or e.outcome == "refused":
            continue
        if subject and (e.subject_type, e.subject_id) != subject:
            continue
        return e
    return None


def waits(rollback: Rollback) -> dict:
    """Where people waited: for approval, to start, at a gate, on a manual step, on a halted
    step until a human acted, while paused."""
    f = facts(rollback)
    E = f.entries
    rows = []
    ends_rollback = ("rollback.aborted", "rollback.rejected")
    for e in E:
        if (
            e.action in ("rollback.submitted", "rollback.approval_lapsed")
            and (e.payload or {}).get("to") == R.AWAITING_APPROVAL
        ):
            end = _next(E, e.at, ("rollback.approved", *ends_rollback))
            rows.append(_wait("rollback", "approval", e.at, end))
        if e.action == "rollback.approved" or (
            e.action == "rollback.submitted" and (e.payload or {}).get("to") == R.APPROVED
        ):
            end = _next(
                E, e.at, ("rollback.started", "rollback.approval_lapsed", "rollback.aborted")
            )
            rows.append(_wait("rollback", "someone to start it", e.at, end))
        if e.action == "rollback.paused":
            rows.append(
                _wait(
                    "rollback",
                    "resume (paused)",
                    e.at,
                    _next(E, e.at, ("rollback.resumed", "rollback.aborted")),
                )
            )
        if e.action == "stage.gated":
            index = next((st.index for st in f.stages if str(st.pk) == e.subject_id), "?")
            end = next(
                (
                    x
                    for x in E
                    if x.at >= e.at
                    and x.action in ("stage.gate_opened", *ends_rollback)
                    and (x.action != "stage.gate_opened" or x.payload.get("stage") == index)
                ),
                None,
            )
            rows.append(_wait(f"stage {index}", "an approver to open its gate", e.at, end))
        if e.subject_type == "step" and (
            e.action == "step.attempt.failed" and (e.payload or {}).get("verdict") == "failed"
        ):
            end = _next(E, e.at, ("step.retried", "step.skipped"), ("step", e.subject_id))
            end = end or _next(E, e.at, ("rollback.aborted",))
            rows.append(
                _wait(f"step #{e.subject_id}", "a human: the step failed (stage halted)", e.at, end)
            )
    for s in f.steps:
        if not s.is_manual:
            continue
        started = next(
            (
                e
                for e in E
                if e.action == "stage.started" and e.payload.get("index") == s.stage.index
            ),
            None,
        )
        if started:
            end = _next(E, started.at, ("step.resolved", "step.skipped"), ("step", str(s.pk)))
            end = end or _next(E, started.at, ("rollback.aborted",))
            rows.append(
                _wait(
                    f"step #{s.pk}", f"a human to do it by hand ({s.system.slug})", started.at, end
                )
            )
    rows.sort(key=lambda r: r["From"])
    return {
        "key": "waits",
        "title": "Where people waited",
        "summary": f"{len(rows)} wait{'s' if len(rows) != 1 else ''}, {sum(r['Waited (s)'] or 0 for r in rows):.1f} s in all.",
        "rows": rows,
    }


# Timeline ------------------------------------------------------------------------------------


def timeline(rollback: Rollback) -> dict:
    rows = [
        {
            "At": fmt_time(e.at),
            "Actor": e.actor,
            "Action": e.action,
            "Subject": f"{e.subject_type} #{e.subject_id}",
            "Outcome": e.outcome,
            "Reason": e.reason,
        }
        for e in facts(rollback).entries
    ]
    return {
        "key": "timeline",
        "title": "Timeline",
        "summary": f"{len(rows)} ledger entries of this rollback, oldest first.",
        "rows": rows,
    }
