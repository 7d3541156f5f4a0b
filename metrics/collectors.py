"""The state of things, read from the database at scrape time (the source of truth).

Counting these as events would lose them with a process, count them twice across
restarts, and disagree with the pages; read at scrape time they survive anything the
database survives. Each scrape costs a handful of grouped queries over indexed columns.
Labels stay bounded: states, triggers, system slugs, never an id.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DateTimeField, Max, Min, Q
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

TRIGGERS = ("manual", "api", "alert", "runbook")  # Rollback.trigger
APPROVAL_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)


class DatabaseCollector(Collector):
    def collect(self) -> Iterator:
        yield from rollbacks_by_state()
        yield from steps_by_state()
        yield from waiting_for_human()
        yield from stages_halted()
        yield from worker_in_flight()
        yield from outbox_backlog()
        yield time_to_approval()
        yield from ledger_verification()


def rollbacks_by_state() -> Iterator:
    from rollbacks.models import Rollback

    ended = CounterMetricFamily(
        "unwind_rollbacks_ended",
        "Rollbacks that reached an end state (succeeded, failed, partially_rolled_back, "
        "aborted), by state, trigger and whether it was a drill.",
        labels=["state", "trigger", "drill"],
    )
    current = GaugeMetricFamily(
        "unwind_rollbacks",
        "Rollbacks in each state now, by state, trigger and whether it is a drill.",
        labels=["state", "trigger", "drill"],
    )
    # Every end state of every trigger starts at 0, so that the first failed rollback is an
    # increase that increase() sees, not a series appearing out of nothing.
    ends = {
        (state.value, trigger, drill): 0
        for state in Rollback.TERMINAL
        for trigger in TRIGGERS
        for drill in ("false", "true")
    }
    rows = (
        Rollback.objects.order_by().values("state", "trigger", "is_drill").annotate(n=Count("id"))
    )
    for row in rows:
        labels = (row["state"], row["trigger"], str(row["is_drill"]).lower())
        current.add_metric(list(labels), row["n"])
        if row["state"] in Rollback.TERMINAL:
            ends[labels] = row["n"]
    for labels, n in ends.items():
        ended.add_metric(list(labels), n)
    yield ended
    yield current


def steps_by_state() -> Iterator:
    from rollbacks.models import Step

    family = GaugeMetricFamily(
        "unwind_steps", "Steps in each state now, by state and system.", labels=["state", "system"]
    )
    rows = Step.objects.order_by().values("state", "system__slug").annotate(n=Count("id"))
    for row in rows:
        family.add_metric([row["state"], row["system__slug"]], row["n"])
    yield family


def waiting_for_human() -> Iterator:
    """Steps a human must act on (a manual step, or a failure to retry or skip) in a rollback
    that is under way, and how long the oldest has waited: since its last attempt ended,
    or since its stage started for a manual step that never ran."""
    from rollbacks.models import Rollback, Step, System

    count = GaugeMetricFamily(
        "unwind_steps_waiting_for_human",
        "Steps waiting for a human now (manual, or failed), by system.",
        labels=["system"],
    )
    oldest = GaugeMetricFamily(
        "unwind_step_waiting_for_human_seconds",
        "How long the oldest step waiting for a human has waited, by system.",
        labels=["system"],
    )
    since = Coalesce(
        Max("attempt_set__finished_at"),
        "stage__started_at",
        "rollback__started_at",
        output_field=DateTimeField(),
    )
    waits = (
        Step.objects.filter(
            state__in=Step.NEEDS_HUMAN,
            rollback__state__in=(Rollback.State.RUNNING, Rollback.State.PAUSED),
        )
        .order_by()
        .values("id", "system__slug")
        .annotate(since=since)
    )
    now = timezone.now()
    per_system: dict[str, list[float]] = {}
    for row in waits:
        waited = (now - (row["since"] or now)).total_seconds()
        per_system.setdefault(row["system__slug"], []).append(waited)
    # Every system counts, 0 included; the oldest wait exists only where a step waits.
    for system in System.objects.order_by("slug").values_list("slug", flat=True):
        count.add_metric([system], len(per_system.get(system, ())))
    for system, seconds in sorted(per_system.items()):
        oldest.add_metric([system], max(seconds))
    yield count
    yield oldest


def stages_halted() -> Iterator:
    from rollbacks.models import Stage

    family = GaugeMetricFamily(
        "unwind_stages_halted", "Stages halted now: a step in them waits for a human."
    )
    family.add_metric([], Stage.objects.filter(state=Stage.State.HALTED).count())
    yield family


def worker_in_flight() -> Iterator:
    """Steps a worker holds now: running under a lease that has not expired. Read from the
    leases, so a worker that died stops counting when its leases run out."""
    from rollbacks.models import Step

    family = GaugeMetricFamily(
        "unwind_worker_inflight_steps", "Steps running on a worker now (under a live lease)."
    )
    family.add_metric(
        [],
        Step.objects.filter(state=Step.State.RUNNING, lease_expires_at__gt=timezone.now()).count(),
    )
    yield family


def outbox_backlog() -> Iterator:
    from rollbacks.models import Outbox

    now = timezone.now()
    due = Outbox.objects.filter(sent_at__isnull=True).aggregate(
        n=Count("id", filter=Q(available_at__lte=now)), oldest=Min("available_at")
    )
    backlog = GaugeMetricFamily(
        "unwind_outbox_backlog", "Outbox rows due and not yet published (a stuck relay grows it)."
    )
    backlog.add_metric([], due["n"])
    age = GaugeMetricFamily(
        "unwind_outbox_oldest_seconds", "How long the oldest unpublished outbox row has been due."
    )
    oldest = due["oldest"]
    age.add_metric([], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
    yield backlog
    yield age


def time_to_approval() -> HistogramMetricFamily:
    """From planned to the first approval, for every rollback that needed one and got it
    (the definition the metrics page and the reports share)."""
    from rollbacks.models import Rollback

    waits = (
        Rollback.objects.with_time_to_approval()
        .filter(approved_at__isnull=False)
        .values_list("time_to_approval", flat=True)
    )
    seconds = [max(w.total_seconds(), 0.0) for w in waits if isinstance(w, timedelta)]
    buckets = [(str(b), sum(s <= b for s in seconds)) for b in APPROVAL_BUCKETS]
    buckets.append(("+Inf", len(seconds)))
    return HistogramMetricFamily(
        "unwind_time_to_approval_seconds",
        "From a rollback's plan to its first approval, for rollbacks that needed one.",
        buckets=buckets,
        sum_value=sum(seconds),
    )


def ledger_verification() -> Iterator:
    from ledger.models import Verification

    latest = Verification.objects.order_by("-started_at").first()
    ok = GaugeMetricFamily(
        "unwind_ledger_verification_ok",
        "1 when the latest ledger verification found the chains intact, 0 when it found a "
        "problem; absent before the first one.",
    )
    at = GaugeMetricFamily(
        "unwind_ledger_verification_timestamp_seconds",
        "When the latest ledger verification started (Unix time).",
    )
    problems = GaugeMetricFamily(
        "unwind_ledger_verification_problems", "Problems the latest ledger verification found."
    )
    if latest is not None:
        ok.add_metric([], 1 if latest.is_ok else 0)
        at.add_metric([], latest.started_at.timestamp())
        problems.add_metric([], latest.problem_count)
    yield ok
    yield at
    yield problems
