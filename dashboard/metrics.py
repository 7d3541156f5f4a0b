"""The metrics page's numbers: aggregate queries over the rollbacks a user may see.

Every figure is computed by the database (``aggregate`` / ``values().annotate()``), never by
a loop over rollbacks, so the page costs the same dozen queries for ten rollbacks or ten
thousand. Drills (``Rollback.is_drill``) are left out of every production figure and
counted apart. Definitions are in docs/dashboard.md.

1. ``base`` picks the production rollbacks planned in the period (and touching the chosen
   system); ``drills`` the drills with the same filters.
2. Latency is requested (planned) → terminal; time to approval is planned → the approval
   that completed the policies (``Rollback.objects.with_time_to_approval``); MTTR is the run's failure report → the rollback succeeded.
3. Per-day/week figures group by the day/week the rollback was planned; per-system figures
   count each rollback once for each system it touched (one row per rollback and system).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import (
    Avg,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import TruncDay, TruncWeek

from governance.models import BreakGlass
from rollbacks.models import Rollback, Stage, Step, System

R = Rollback.State
S = Step.State
TRUNC = {"day": TruncDay, "week": TruncWeek}


def _duration(end: str, start: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(end) - F(start), output_field=DurationField())


LATENCY = _duration("finished_at", "created_at")
MTTR = _duration("finished_at", "run__failed_at")


def _flagged(rollbacks: QuerySet[Rollback]) -> QuerySet[Rollback]:
    """With ``has_retry`` (a step needed more than one try) and ``has_break_glass``."""
    return rollbacks.annotate(
        has_retry=Exists(Step.objects.filter(rollback=OuterRef("pk"), attempts__gt=1)),
        has_break_glass=Exists(BreakGlass.objects.filter(rollback=OuterRef("pk"))),
    )


# Succeeded, but only just: a step needed more than one try, or break-glass was used.
NEAR_MISS = Q(state=R.SUCCEEDED) & (Q(has_retry=True) | Q(has_break_glass=True))


@dataclass
class Filters:
    since: datetime
    until: datetime
    bucket: str = "day"
    system: System | None = None

    @property
    def last_day(self) -> date:
        """The last day in the period (``until`` is the midnight after it)."""
        return (self.until - timedelta(days=1)).date()


@dataclass
class Metrics:
    filters: Filters
    totals: dict[str, Any] = field(default_factory=dict)
    drills: int = 0
    over_time: list[dict[str, Any]] = field(default_factory=list)
    per_system: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    compensation: dict[str, int] = field(default_factory=dict)
    compensation_per_system: list[dict[str, Any]] = field(default_factory=list)
    near_misses: list[dict[str, Any]] = field(default_factory=list)


def scoped(user: Any, filters: Filters) -> QuerySet[Rollback]:
    """The rollbacks the user may see, planned in the period, touching the chosen system."""
    rollbacks = Rollback.objects.visible_to(user).filter(
        created_at__gte=filters.since, created_at__lt=filters.until
    )
    if filters.system is not None:
        touching = Step.objects.filter(system=filters.system).values("rollback_id")
        rollbacks = rollbacks.filter(pk__in=touching)
    return rollbacks


def _summary(rollbacks: QuerySet[Rollback]) -> dict[str, Any]:
    """Counts and mean/max durations of a set of rollbacks, in one query."""
    terminal = Q(state__in=Rollback.TERMINAL, finished_at__isnull=False)
    recovered = Q(state=R.SUCCEEDED, run__failed_at__isnull=False)
    return _flagged(rollbacks.with_time_to_approval()).aggregate(
        count=Count("pk"),
        finished=Count("pk", filter=terminal),
        succeeded=Count("pk", filter=Q(state=R.SUCCEEDED)),
        failed=Count("pk", filter=Q(state__in=(R.FAILED, R.PARTIALLY_ROLLED_BACK))),
        aborted=Count("pk", filter=Q(state=R.ABORTED)),
        near_misses=Count("pk", filter=NEAR_MISS),
        latency_avg=Avg(LATENCY, filter=terminal),
        latency_max=Max(LATENCY, filter=terminal),
        approval_avg=Avg("time_to_approval"),
        approval_max=Max("time_to_approval"),
        approved=Count("approved_at"),
        mttr_avg=Avg(MTTR, filter=recovered),
        mttr_max=Max(MTTR, filter=recovered),
        recovered=Count("pk", filter=recovered),
    )


def _over_time(rollbacks: QuerySet[Rollback], bucket: str) -> list[dict[str, Any]]:
    terminal = Q(state__in=Rollback.TERMINAL, finished_at__isnull=False)
    recovered = Q(state=R.SUCCEEDED, run__failed_at__isnull=False)
    rows = (
        _flagged(rollbacks.with_time_to_approval())
        .annotate(period=TRUNC[bucket]("created_at"))
        .order_by()
        .values("period")
        .annotate(
            count=Count("pk"),
            failed=Count("pk", filter=Q(state__in=(R.FAILED, R.PARTIALLY_ROLLED_BACK))),
            near_misses=Count("pk", filter=NEAR_MISS),
            latency_avg=Avg(LATENCY, filter=terminal),
            approval_avg=Avg("time_to_approval"),
            mttr_avg=Avg(MTTR, filter=recovered),
        )
        .order_by("period")
    )
    return list(rows)


def _per_system(rollbacks: QuerySet[Rollback]) -> list[dict[str, Any]]:
    """One row per system: each rollback counted once per system it touched (the first step
    of each rollback on each system stands for the pair)."""
    firsts = (
        Step.objects.filter(rollback__in=rollbacks.values("pk"))
        .order_by()
        .values("rollback_id", "system_id")
        .annotate(first=Min("pk"))
        .values("first")
    )
    terminal = Q(rollback__state__in=Rollback.TERMINAL, rollback__finished_at__isnull=False)
    recovered = Q(rollback__state=R.SUCCEEDED, rollback__run__failed_at__isnull=False)
    return list(
        Step.objects.filter(pk__in=firsts)
        .order_by()
        .values("system__slug")
        .annotate(
            count=Count("rollback_id"),
            failed=Count(
                "rollback_id",
                filter=Q(rollback__state__in=(R.FAILED, R.PARTIALLY_ROLLED_BACK)),
            ),
            latency_avg=Avg(
                _duration("rollback__finished_at", "rollback__created_at"), filter=terminal
            ),
            mttr_avg=Avg(
                _duration("rollback__finished_at", "rollback__run__failed_at"), filter=recovered
            ),
        )
        .order_by("system__slug")
    )


def _stages(rollbacks: QuerySet[Rollback]) -> list[dict[str, Any]]:
    """Mean and longest duration of the 1st, 2nd, … stage of the finished stages."""
    return list(
        Stage.objects.filter(
            rollback__in=rollbacks.values("pk"),
            started_at__isnull=False,
            finished_at__isnull=False,
        )
        .order_by()
        .values("index")
        .annotate(
            count=Count("pk"),
            avg=Avg(_duration("finished_at", "started_at")),
            max=Max(_duration("finished_at", "started_at")),
        )
        .order_by("index")
    )


# Compensation outcomes of the steps of finished rollbacks.
OUTCOMES = {
    "first_time": ("succeeded at the first try", Q(state=S.SUCCEEDED, attempts=1)),
    "after_retry": ("succeeded after a retry", Q(state=S.SUCCEEDED, attempts__gt=1)),
    "by_hand": ("done by hand (manual step)", Q(state=S.SUCCEEDED, attempts=0)),
    "failed": ("failed", Q(state=S.FAILED)),
    "skipped": ("skipped", Q(state=S.SKIPPED)),
    "cancelled": ("cancelled (rollback aborted)", Q(state=S.CANCELLED)),
}


def _outcome_counts() -> dict[str, Count]:
    return {key: Count("pk", filter=where) for key, (_, where) in OUTCOMES.items()}


def _compensation(rollbacks: QuerySet[Rollback]) -> QuerySet[Step]:
    return Step.objects.filter(
        rollback__in=rollbacks.filter(state__in=Rollback.TERMINAL).values("pk")
    ).order_by()


def success_rate(counts: dict[str, int]) -> float | None:
    """Steps that succeeded (however) among those that ran to an end (cancelled left out)."""
    ran = sum(counts[k] for k in ("first_time", "after_retry", "by_hand", "failed", "skipped"))
    if not ran:
        return None
    return (counts["first_time"] + counts["after_retry"] + counts["by_hand"]) / ran


def near_misses(rollbacks: QuerySet[Rollback], limit: int = 20) -> list[dict[str, Any]]:
    """The latest near misses, each with what made it one."""
    retries = (
        Step.objects.filter(rollback=OuterRef("pk"), attempts__gt=1)
        .order_by()
        .values("rollback_id")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return list(
        _flagged(rollbacks)
        .filter(NEAR_MISS)
        .annotate(retried_steps=Subquery(retries))
        .values("pk", "created_at", "retried_steps", "has_break_glass")
        .order_by("-created_at")[:limit]
    )


def compute(user: Any, filters: Filters) -> Metrics:
    everything = scoped(user, filters)
    production = everything.filter(is_drill=False)
    counts = _compensation(production).aggregate(**_outcome_counts())
    per_system_outcomes = list(
        _compensation(production)
        .values("system__slug")
        .annotate(**_outcome_counts())
        .order_by("system__slug")
    )
    for row in per_system_outcomes:
        row["rate"] = success_rate(row)
    totals = _summary(production)
    totals["success_rate"] = success_rate(counts)
    return Metrics(
        filters=filters,
        totals=totals,
        drills=everything.filter(is_drill=True).count(),
        over_time=_over_time(production, filters.bucket),
        per_system=_per_system(production),
        stages=_stages(production),
        compensation=counts,
        compensation_per_system=per_system_outcomes,
        near_misses=near_misses(production),
    )


def default_period(today: date, days: int = 30) -> tuple[date, date]:
    return today - timedelta(days=days - 1), today
