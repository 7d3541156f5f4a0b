"""What happens, counted where it happens: in the worker's pool processes as much as in web.

prometheus-client's multiprocess mode keeps each process's values in files under
``PROMETHEUS_MULTIPROC_DIR`` (settings: ``UNWIND_VAR_DIR/prometheus``), set before this
module is first imported; ``/metrics`` adds them up. Only counters and histograms live here,
whose sums stay right after a process exits, so no dead process has to be marked.

Labels stay bounded: an outcome, a system's slug, a kind of recovery; never an id.
Imports nothing of the apps at load, so the engine may import it.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

STEP_ATTEMPTS = Counter(
    "unwind_step_attempts",
    "Step attempts whose result was recorded, by outcome (succeeded, will_retry, failed) and system.",
    ["outcome", "system"],
)
STEP_DURATION = Histogram(
    "unwind_step_duration_seconds",
    "How long a step attempt took, from its claim to its recorded result, by system.",
    ["system"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SWEEPER = Counter(
    "unwind_sweeper_recoveries",
    "What the sweeper recovered: expired (a lease that ran out, its step handed on), "
    "redispatched (a lost message sent again), published (an outbox row left unsent).",
    ["kind"],
)

_slugs: dict[int, str] = {}


def _system_slug(step: Any) -> str:
    """The step's system's slug: from the step when loaded, else looked up once a process."""
    if type(step).system.is_cached(step):
        return step.system.slug
    slug = _slugs.get(step.system_id)
    if slug is None:
        from rollbacks.models import System

        slug = System.objects.filter(pk=step.system_id).values_list("slug", flat=True).first()
        slug = _slugs[step.system_id] = slug or "unknown"
    return slug


def attempt_recorded(step: Any, attempt: Any, verdict: str) -> None:
    """An attempt's result was recorded (``record_attempt_entry``): counted once its
    transaction commits, so a rolled-back record counts nothing."""
    from django.db import transaction
    from django.utils import timezone

    system = _system_slug(step)
    outcome = verdict.replace(" ", "_")
    seconds = ((attempt.finished_at or timezone.now()) - attempt.started_at).total_seconds()

    def count() -> None:
        STEP_ATTEMPTS.labels(outcome=outcome, system=system).inc()
        STEP_DURATION.labels(system=system).observe(max(seconds, 0.0))

    transaction.on_commit(count)


def sweep_counted(counts: dict[str, int]) -> None:
    for kind in ("expired", "redispatched", "published"):
        if counts.get(kind):
            SWEEPER.labels(kind=kind).inc(counts[kind])
