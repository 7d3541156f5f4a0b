"""What automated processes report: runs, their forward actions, their failure.

Reports are idempotent: registering a run twice with the same (process, external id), or
reporting an action twice with the same idempotency key, records it once and answers with
what was recorded the first time.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

import ledger.services as ledger
from rollbacks.engine import EngineError
from rollbacks.models import ForwardAction, ProcessRun, System
from rollbacks.permissions import grant_run


def run_register(
    *, process: str, external_id: str, actor: Any, trace_id: str = ""
) -> tuple[ProcessRun, bool]:
    """(run, created). A second registration of the same run returns the first."""
    existing = ProcessRun.objects.filter(process=process, external_id=external_id).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            run = ProcessRun.objects.create(
                process=process,
                external_id=external_id,
                trace_id=trace_id,
                created_by=actor if getattr(actor, "is_authenticated", False) else None,
            )
            ledger.record(
                actor=actor,
                action="run.registered",
                subject=run,
                trace_id=trace_id,
                payload={"process": process, "external_id": external_id},
            )
            grant_run(run, creator=actor)
    except IntegrityError:  # registered concurrently by a retry of the same request
        return ProcessRun.objects.get(process=process, external_id=external_id), False
    return run, True


def action_report(
    *,
    run: ProcessRun,
    system_slug: str,
    action_type: str,
    idempotency_key: str,
    actor: Any,
    params: dict | None = None,
    before: dict | None = None,
    after: dict | None = None,
    status: str = ForwardAction.Status.COMPLETED,
    trace_id: str = "",
) -> tuple[ForwardAction, bool]:
    """(action, created). The same idempotency key twice is recorded once."""
    existing = ForwardAction.objects.filter(run=run, idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing, False
    systems = System.objects.all() if isinstance(actor, str) else System.objects.visible_to(actor)
    system = systems.filter(slug=system_slug).first()
    if system is None:
        # An account reports only on its teams' systems: otherwise it could plan compensations
        # against another team's systems with parameters of its choosing.
        raise EngineError(
            {"system": f"unknown system {system_slug!r}, or not one of your teams' systems"}
        )
    if status not in ForwardAction.Status.values:
        raise EngineError({"status": f"must be one of {', '.join(ForwardAction.Status.values)}"})
    try:
        with transaction.atomic():
            ProcessRun.objects.select_for_update().get(pk=run.pk)
            sequence = (run.actions.aggregate(m=Max("sequence"))["m"] or 0) + 1
            action = ForwardAction.objects.create(
                run=run,
                sequence=sequence,
                system=system,
                action_type=action_type,
                status=status,
                params=params or {},
                before=before,
                after=after,
                idempotency_key=idempotency_key,
                trace_id=trace_id or run.trace_id,
            )
            ledger.record(
                actor=actor,
                action="run.action_reported",
                subject=action,
                trace_id=action.trace_id,
                payload={
                    "run": run.pk,
                    "system": system_slug,
                    "action_type": action_type,
                    "idempotency_key": idempotency_key,
                    "status": status,
                },
            )
            grant_run(run, system=system)
    except IntegrityError:
        return ForwardAction.objects.get(run=run, idempotency_key=idempotency_key), False
    return action, True


def run_fail(*, run: ProcessRun, reason: str, actor: Any) -> ProcessRun:
    """Record that the run failed. Reporting it again changes nothing."""
    if not (reason or "").strip():
        raise EngineError({"reason": "say why the run failed"})
    with transaction.atomic():
        updated = (
            ProcessRun.objects.filter(pk=run.pk)
            .exclude(status=ProcessRun.Status.FAILED)
            .update(
                status=ProcessRun.Status.FAILED, failure_reason=reason, failed_at=timezone.now()
            )
        )
        if updated:
            ledger.record(
                actor=actor, action="run.failed", subject=run, reason=reason, trace_id=run.trace_id
            )
    run.refresh_from_db()
    return run
