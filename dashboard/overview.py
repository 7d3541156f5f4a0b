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
from rollbacks.models import HealthCheck, Rollback, Stage, Step, System

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


def failed_steps(user: Any) -> QuerySet[Step]:
    """Steps that failed and wait for a human, newest first."""
    visible = Rollback.objects.visible_to(user).values("pk")
    return (
        Step.objects.filter(rollback__in=visible, state=Step.State.FAILED)
        .select_related("system", "rollback")
        .order_by("-finished_at", "-pk")[:RECENT]
    )


def escalations(user: Any) -> list[dict[str, Any]]:
    """Escalations (governance notifications), one row per subject however many channels."""
    visible = Rollback.objects.visible_to(user).values("pk")
    rows = (
        Notification.objects.filter(rollback__in=visible)
        .values("kind", "rollback_id", "subject_key")
        .annotate(
            at=Min("created_at"),
            channels=Count("pk"),
            unsent=Count("pk", filter=Q(sent_at__isnull=True)),
        )
        .order_by("-at")[:RECENT]
    )
    labels = dict(Notification.Kind.choices)
    return [{**row, "label": labels.get(row["kind"], row["kind"])} for row in rows]


@dataclass
class Overview:
    active: list[Rollback]
    pending: list[Rollback]
    is_approver: bool
    systems: list[System]
    failures: list[Rollback]
    failed_steps: list[Step]
    escalations: list[dict[str, Any]]
    health_counts: list[tuple[str, str, int]]  # (label, status, how many)
    now: Any


def overview(user: Any) -> Overview:
    systems = list(System.objects.visible_to(user).select_related("team"))
    counts = {health: 0 for health in System.Health.values}
    for system in systems:
        counts[system.health] += 1
    return Overview(
        active=list(active_rollbacks(user)),
        pending=governance_page.pending_for(user),
        is_approver=governance_page.is_approver(user),
        systems=systems,
        failures=list(recent_failures(user)),
        failed_steps=list(failed_steps(user)),
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
