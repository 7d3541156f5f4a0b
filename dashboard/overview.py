"""What the overview page shows: reads only, each a fixed number of queries, each scoped
to what the user may see (``visible_to``).

The dashboard sits on top of the other apps: it imports governance and rollbacks (for the
pending approvals and escalations), and nothing imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Case,
    Count,
    Exists,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.utils import timezone

from governance import page as governance_page
from governance.models import BreakGlass, Notification
from rollbacks import access
from rollbacks.models import HealthCheck, ProcessRun, Rollback, Stage, Step, System

R = Rollback.State
RECENT = 10  # rows in each "recent" list
FAILED = (R.FAILED, R.PARTIALLY_ROLLED_BACK)


def active_rollbacks(user: Any) -> QuerySet[Rollback]:
    """Rollbacks not finished yet, running and paused first, with their progress: steps done
    of all, the current stage (the first one not finished), and the break-glass mark."""
    current = (
        Stage.objects.filter(rollback=OuterRef("pk"))
        .exclude(state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED))
        .order_by("index")
    )
    return (
        Rollback.objects.visible_to(user)
        .exclude(state__in=Rollback.TERMINAL)
        .select_related("run", "requested_by")
        .annotate(
            step_count=Count("steps", distinct=True),
            done_count=Count("steps", filter=Q(steps__state__in=Step.DONE), distinct=True),
            stage_count=Count("stages", distinct=True),
            current_stage=Subquery(current.values("index")[:1]),
            current_stage_state=Subquery(current.values("state")[:1]),
            has_break_glass=Exists(BreakGlass.objects.filter(rollback=OuterRef("pk"))),
            rank=Case(
                When(state__in=(R.RUNNING, R.PAUSED), then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            ),
        )
        .order_by("rank", "-created_at", "-pk")
    )


def recent_failures(user: Any) -> QuerySet[Rollback]:
    """Rollbacks that ended failed or partially rolled back, newest first."""
    return (
        Rollback.objects.visible_to(user)
        .filter(state__in=FAILED)
        .select_related("run")
        .order_by("-finished_at", "-pk")[:RECENT]
    )


def steps_needing_a_human(user: Any) -> list[Step]:
    """Steps of rollbacks under way that wait for a human: manual steps to do by hand and
    failed steps that halt their stage, oldest first (the longest wait leads)."""
    visible = Rollback.objects.visible_to(user).exclude(state__in=Rollback.TERMINAL).values("pk")
    return list(
        Step.objects.filter(rollback__in=visible, state__in=Step.NEEDS_HUMAN)
        .select_related("system", "rollback", "stage", "forward_action")
        .order_by("finished_at", "pk")[:RECENT]
    )


def failed_runs_without_rollback(user: Any) -> list[ProcessRun]:
    """Runs that reported a failure and have no rollback yet, newest failure first."""
    return list(
        ProcessRun.objects.visible_to(user)
        .filter(status=ProcessRun.Status.FAILED)
        .exclude(Exists(Rollback.objects.filter(run=OuterRef("pk"))))
        .order_by("-failed_at", "-pk")[:RECENT]
    )


def _is_still_open(row: dict[str, Any], states: dict[str, Any], steps: dict[int, Any]) -> bool:
    """Whether the cause of an escalation is still there: an overdue approval until the
    rollback no longer awaits it, a step until it moved on (its key names the state and the
    attempts it was escalated in: ``step:<id>:<state>:<attempts>``)."""
    kind = row["kind"]
    if kind == Notification.Kind.APPROVAL_OVERDUE:
        return states.get(row["rollback_id"]) == Rollback.State.AWAITING_APPROVAL
    if kind == Notification.Kind.STEP_NEEDS_HUMAN:
        _, pk, state, attempts = (row["subject_key"].split(":") + ["", "", "", ""])[:4]
        current = steps.get(int(pk)) if pk.isdigit() else None
        return (
            current is not None
            and current == (state, int(attempts or 0))
            and (states.get(row["rollback_id"]) in (R.RUNNING, R.PAUSED))
        )
    return True


def escalations(user: Any) -> list[dict[str, Any]]:
    """Escalations (governance notifications) whose cause is still there, one row per
    subject however many channels. Two queries."""
    visible = Rollback.objects.visible_to(user).values("pk")
    rows = list(
        Notification.objects.filter(rollback__in=visible)
        .values("kind", "rollback_id", "subject_key", "rollback__state")
        .annotate(
            at=Min("created_at"),
            channels=Count("pk"),
            unsent=Count("pk", filter=Q(sent_at__isnull=True)),
        )
        .order_by("-at")[: RECENT * 5]
    )
    states = {r["rollback_id"]: r["rollback__state"] for r in rows}
    step_ids = [
        int(r["subject_key"].split(":")[1])
        for r in rows
        if r["kind"] == Notification.Kind.STEP_NEEDS_HUMAN
        and r["subject_key"].count(":") >= 1
        and r["subject_key"].split(":")[1].isdigit()
    ]
    steps = {
        pk: (state, attempts)
        for pk, state, attempts in Step.objects.filter(pk__in=step_ids).values_list(
            "pk", "state", "attempts"
        )
    }
    labels = dict(Notification.Kind.choices)
    return [
        {**row, "label": labels.get(row["kind"], row["kind"])}
        for row in rows
        if _is_still_open(row, states, steps)
    ][:RECENT]


@dataclass
class Overview:
    active: list[Rollback]
    pending: list[Rollback]
    is_approver: bool
    is_operator: bool
    systems: list[System]
    failures: list[Rollback]
    failed_runs: list[ProcessRun]  # no rollback yet
    to_start: list[Rollback]  # approved, waiting for an operator
    waiting_steps: list[Step]  # manual steps to do by hand
    halted_steps: list[Step]  # failed steps halting their stage
    escalations: list[dict[str, Any]]
    health_counts: list[tuple[str, str, int]]  # (label, status, how many)
    now: Any

    @property
    def needs_action(self) -> bool:
        return bool(
            self.failed_runs
            or self.pending
            or self.to_start
            or self.waiting_steps
            or self.halted_steps
        )


def overview(user: Any) -> Overview:
    systems = list(System.objects.visible_to(user).select_related("team"))
    counts = {health: 0 for health in System.Health.values}
    for system in systems:
        counts[system.health] += 1
    active = list(active_rollbacks(user))
    # What needs action is what needs *this* user: an operator's runs, starts and steps.
    is_operator = access.has_role(user, *access.OPERATOR_ROLES)
    needing = steps_needing_a_human(user) if is_operator else []
    return Overview(
        active=active,
        pending=governance_page.pending_for(user),
        is_approver=governance_page.is_approver(user),
        is_operator=is_operator,
        systems=systems,
        failures=list(recent_failures(user)),
        failed_runs=failed_runs_without_rollback(user) if is_operator else [],
        to_start=[r for r in active if r.state == R.APPROVED] if is_operator else [],
        waiting_steps=[step for step in needing if step.state == Step.State.WAITING_HUMAN],
        halted_steps=[step for step in needing if step.state == Step.State.FAILED],
        escalations=escalations(user),
        health_counts=[(System.Health(k).label, k, n) for k, n in counts.items() if n],
        now=timezone.now(),
    )


# Health around a rollback -------------------------------------------------------------------


@dataclass
class HealthAround:
    system: System
    before: HealthCheck | None
    after: HealthCheck | None

    @property
    def is_worse(self) -> bool:
        order = {"green": 0, "unknown": 1, "amber": 2, "red": 3}
        if self.before is None or self.after is None:
            return False
        return order[self.after.status] > order[self.before.status]


def _check_at(system_ref: OuterRef, **where: Any) -> QuerySet[HealthCheck]:
    return HealthCheck.objects.filter(system=system_ref, **where)


def health_around(rollback: Rollback) -> list[HealthAround]:
    """Each system the rollback touches, with its last health check before the rollback
    started (before it was planned, if it never started) and its first check after it
    ended (none while it runs). Two queries, whatever the number of systems or checks."""
    start = rollback.started_at or rollback.created_at
    end = rollback.finished_at
    before = _check_at(OuterRef("pk"), checked_at__lte=start).order_by("-checked_at")
    systems = (
        System.objects.filter(pk__in=Step.objects.filter(rollback=rollback).values("system_id"))
        .annotate(before_id=Subquery(before.values("pk")[:1]))
        .order_by("tier", "slug")
    )
    if end is not None:
        after = _check_at(OuterRef("pk"), checked_at__gte=end).order_by("checked_at")
        systems = systems.annotate(after_id=Subquery(after.values("pk")[:1]))
    systems = list(systems)
    ids = {s.before_id for s in systems} | {getattr(s, "after_id", None) for s in systems}
    checks = HealthCheck.objects.in_bulk([i for i in ids if i is not None])
    return [
        HealthAround(
            system=s, before=checks.get(s.before_id), after=checks.get(getattr(s, "after_id", None))
        )
        for s in systems
    ]
