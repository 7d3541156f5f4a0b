"""Reconciliation: queue, run and record the checks; dismiss findings; add follow-up stages.

Every state change is a compare-and-set in one transaction with its ledger entry, on the
rollback's chain. Work reaches the worker through the outbox (``rollbacks/outbox.py``), so
a reconciliation is never lost between a commit and its message; a reconciliation whose
worker died is handed on by ``sweep`` once its lease expires. See docs/reconciliation.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

import ledger.services as ledger
from reconcile import checks as checks_mod
from reconcile.models import CheckResult, Finding, Reconciliation
from rollbacks import access, engine, outbox, services
from rollbacks.models import Rollback, Stage, Step, System
from rollbacks.templating import TemplateError, render_compensation

RUN_TASK = "reconcile.tasks.run_reconciliation"
UNCLAIMED_AFTER = timedelta(seconds=30)  # a queued run not claimed by then lost its message
LEASE_MARGIN = timedelta(seconds=30)
Q, F = Reconciliation.State, Finding.Status


class ReconcileError(ValidationError):
    """The action is not possible; built from {field: message} like ``EngineError``."""


# Queueing --------------------------------------------------------------------------------


def _queue(rollback: Rollback, actor: Any, trigger: str) -> Reconciliation:
    rec = Reconciliation.objects.create(
        rollback=rollback,
        trigger=trigger,
        requested_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    outbox.enqueue(RUN_TASK, reconciliation_id=rec.pk)
    if trigger == Reconciliation.Trigger.AUTO:
        # Follows from the entry that ended the rollback (as a step's dispatch follows from
        # its stage's); ``reconcile.started`` records the run when a worker claims it.
        return rec
    ledger.record(
        actor=actor,
        action="reconcile.requested",
        subject=rec,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        payload={"reconciliation": rec.pk, "trigger": trigger},
    )
    return rec


def on_rollback_ended(sender: Any, rollback: Rollback, actor: Any, **_: Any) -> None:
    """``rollbacks.engine.rollback_ended``: queue the checks in the same transaction."""
    _queue(rollback, actor, Reconciliation.Trigger.AUTO)


def request_reconciliation(*, rollback: Rollback, actor: Any) -> Reconciliation:
    """An operator re-runs the checks of a finished rollback."""
    access.require_operator(
        actor,
        rollback,
        "reconcile.request",
        why="only an operator of the rollback's teams may re-run reconciliation",
    )
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=rollback.pk)
        if not rollback.is_terminal:
            raise ReconcileError(
                {
                    "state": f"rollback #{rollback.pk} is {rollback.get_state_display()}: "
                    "reconciliation runs once it has ended"
                }
            )
        if rollback.reconciliations.filter(state__in=(Q.QUEUED, Q.RUNNING)).exists():
            raise ReconcileError(
                {"state": "a reconciliation of this rollback is already under way"}
            )
        return _queue(rollback, actor, Reconciliation.Trigger.MANUAL)


# Running ----------------------------------------------------------------------------------


def _context(rollback: Rollback) -> dict[str, Any]:
    return engine.template_roots(rollback.run, rollback)


def _plan(rollback: Rollback) -> list[tuple[System, Any]]:
    """(system, newest contract or None) for every system the rollback touched."""
    systems = list(
        System.objects.filter(pk__in=rollback.steps.values("system_id")).order_by("slug")
    )
    contracts = services.latest_contracts(systems)
    return [(s, contracts.get(s.pk)) for s in systems]


def _lease(plan) -> timedelta:
    total = sum(
        check.get("timeout_s", checks_mod.DEFAULT_TIMEOUT_S)
        for _, contract in plan
        if contract is not None
        for check in contract.reconciliation
    )
    return timedelta(seconds=total) + LEASE_MARGIN


def fingerprint(system: System, check_name: str, details: dict) -> str:
    canonical = json.dumps([system.slug, check_name, details], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_reconciliation(*, reconciliation_id: int, worker: str = "worker") -> str:
    """Claim, run every check outside any transaction, record. Returns what happened."""
    rec = Reconciliation.objects.select_related("rollback__run", "rollback__requested_by").get(
        pk=reconciliation_id
    )
    rollback = rec.rollback
    plan = _plan(rollback)
    now = timezone.now()
    with transaction.atomic():
        claimed = Reconciliation.objects.filter(pk=rec.pk, state=Q.QUEUED).update(
            state=Q.RUNNING,
            attempts=rec.attempts + 1,
            started_at=now,
            lease_expires_at=now + _lease(plan),
            worker=worker,
        )
        if not claimed:
            return "not claimable"
        ledger.record(
            actor="worker",
            action="reconcile.started",
            subject=rec,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            payload={
                "reconciliation": rec.pk,
                "trigger": rec.trigger,
                "attempt": rec.attempts + 1,
                "systems": [s.slug for s, _ in plan],
            },
        )
    attempt = rec.attempts + 1
    ctx = _context(rollback)
    results: list[tuple[System, Any, dict | None, checks_mod.CheckOutcome, int]] = []
    for system, contract in plan:
        checks = contract.reconciliation if contract is not None else []
        if not checks:
            why = "no contract" if contract is None else f"contract v{contract.version} has none"
            results.append(
                (system, contract, None, checks_mod.CheckOutcome("no_checks", [], why), 0)
            )
            continue
        for check in checks:
            started = time.monotonic()
            outcome = checks_mod.run_check(check, ctx)
            results.append(
                (system, contract, check, outcome, int((time.monotonic() - started) * 1000))
            )
    return _record(rec, attempt, results, ctx)


def _suggestion(check: dict, row: dict, ctx: dict) -> tuple[dict, str]:
    try:
        return render_compensation(check["compensation"], ctx | {"finding": row}), ""
    except TemplateError as exc:
        return {}, str(exc)[:500]


def _record(rec: Reconciliation, attempt: int, results, ctx) -> str:
    rollback = rec.rollback
    now = timezone.now()
    with transaction.atomic():
        Rollback.objects.select_for_update().get(pk=rollback.pk)
        counts = {"findings": 0, "errors": 0, "checks": 0}
        summary_parts = []
        done = Reconciliation.objects.filter(pk=rec.pk, state=Q.RUNNING, attempts=attempt).update(
            state=Q.DONE, finished_at=now, lease_expires_at=None
        )
        if not done:  # our lease expired and the run was handed on: a zombie's results
            return "refused"
        dismissed_before = {
            f.fingerprint: f
            for f in Finding.objects.filter(rollback=rollback, status=F.DISMISSED).exclude(
                reconciliation=rec
            )
        }
        for system, contract, check, outcome, duration in results:
            result = CheckResult.objects.create(
                reconciliation=rec,
                system=system,
                contract=contract,
                check_name=check["name"] if check else "",
                outcome=outcome.outcome,
                detail=outcome.detail,
                finding_count=len(outcome.rows),
                truncated=outcome.truncated,
                duration_ms=duration,
            )
            if check is None:
                continue
            counts["checks"] += 1
            if outcome.outcome == CheckResult.Outcome.ERROR:
                counts["errors"] += 1
                summary_parts.append(f"{system.slug}/{check['name']} could not run")
            for row in outcome.rows:
                counts["findings"] += 1
                comp, comp_error = _suggestion(check, row, ctx)
                fp = fingerprint(system, check["name"], row)
                earlier = dismissed_before.get(fp)
                finding = Finding.objects.create(
                    reconciliation=rec,
                    rollback=rollback,
                    result=result,
                    system=system,
                    check_name=check["name"],
                    category=check["category"],
                    description=check["description"],
                    details=row,
                    fingerprint=fp,
                    compensation=comp,
                    compensation_error=comp_error,
                    status=F.DISMISSED if earlier else F.OPEN,
                    decided_by=earlier.decided_by if earlier else None,
                    decided_at=earlier.decided_at if earlier else None,
                    dismiss_reason=f"dismissed before (finding #{earlier.pk}): {earlier.dismiss_reason}"
                    if earlier
                    else "",
                )
                ledger.record(
                    actor="worker",
                    action="reconcile.finding",
                    subject=finding,
                    rollback_id=rollback.pk,
                    trace_id=rollback.trace_id,
                    reason=check["description"],
                    payload={
                        "reconciliation": rec.pk,
                        "system": system.slug,
                        "check": check["name"],
                        "category": check["category"],
                        "details": row,
                        "compensation": comp,
                        "status": finding.status,
                    },
                )
        found = counts["findings"]
        summary = (
            f"{found} finding{'s' * (found != 1)} from {counts['checks']} "
            f"check{'s' * (counts['checks'] != 1)}"
        )
        if summary_parts:
            summary += "; " + "; ".join(summary_parts)
        Reconciliation.objects.filter(pk=rec.pk).update(summary=summary[:300])
        ledger.record(
            actor="worker",
            action="reconcile.finished",
            subject=rec,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            outcome="ok" if not counts["errors"] else "failed",
            reason=summary[:300],
            payload=counts | {"reconciliation": rec.pk},
        )
    return summary


def sweep() -> dict[str, int]:
    """Hand on reconciliations whose worker died (lease expired) and re-send queued ones whose
    message was lost. Safe to run anywhere, any number of times at once."""
    now = timezone.now()
    counts = {"expired": 0, "resent": 0}
    for rec in Reconciliation.objects.filter(state=Q.RUNNING, lease_expires_at__lt=now):
        with transaction.atomic():
            if not Reconciliation.objects.filter(
                pk=rec.pk, state=Q.RUNNING, attempts=rec.attempts
            ).update(state=Q.QUEUED, lease_expires_at=None, requested_at=now):
                continue
            outbox.enqueue(RUN_TASK, reconciliation_id=rec.pk)
            ledger.record(
                actor="sweeper",
                action="reconcile.lease_expired",
                subject=rec,
                rollback_id=rec.rollback_id,
                outcome="failed",
                payload={"attempt": rec.attempts, "worker": rec.worker},
            )
            counts["expired"] += 1
    stale = Reconciliation.objects.filter(state=Q.QUEUED, requested_at__lt=now - UNCLAIMED_AFTER)
    with transaction.atomic():
        ids = list(stale.values_list("pk", flat=True)[:1000])
        for rec_id in ids:
            outbox.enqueue(RUN_TASK, reconciliation_id=rec_id)
        stale.filter(pk__in=ids).update(requested_at=now)
        counts["resent"] = len(ids)
    return counts


# Operator decisions -------------------------------------------------------------------------


def _require_finding_operator(actor: Any, finding: Finding, action: str) -> None:
    if not (
        access.can_operate(actor, finding.rollback)
        and Finding.objects.actionable_by(actor).filter(pk=finding.pk).exists()
    ):
        access.refuse(
            actor=actor,
            action=action,
            subject=finding,
            rollback_id=finding.rollback_id,
            why=f"only an operator of {finding.system.slug}'s team may decide on this finding",
        )


def finding_dismiss(*, finding: Finding, actor: Any, reason: str) -> Finding:
    """Open → dismissed, with the operator's reason."""
    _require_finding_operator(actor, finding, "reconcile.finding_dismiss")
    reason = (reason or "").strip()
    if not reason:
        raise ReconcileError({"reason": "say why this finding needs no action"})
    with transaction.atomic():
        Rollback.objects.select_for_update().get(pk=finding.rollback_id)
        if not Finding.objects.filter(pk=finding.pk, status=F.OPEN).update(
            status=F.DISMISSED, decided_by=actor, decided_at=timezone.now(), dismiss_reason=reason
        ):
            current = Finding.objects.get(pk=finding.pk)
            raise ReconcileError(
                {
                    "status": f"finding #{finding.pk} is {current.get_status_display()}: cannot dismiss"
                }
            )
        ledger.record(
            actor=actor,
            action="reconcile.finding_dismissed",
            subject=finding,
            rollback_id=finding.rollback_id,
            reason=reason,
            payload={"system": finding.system.slug, "check": finding.check_name},
        )
    finding.refresh_from_db()
    return finding


def followup_add(*, rollback: Rollback, finding_ids: list[int], actor: Any) -> Stage:
    """Add the selected findings' suggested compensations as a new last stage (one step per
    finding) and send the rollback back through approval (``engine.rollback_reopen``)."""
    access.require_operator(
        actor,
        rollback,
        "reconcile.followup_add",
        why="only an operator of the rollback's teams may add a follow-up stage",
    )
    ids = sorted({int(i) for i in finding_ids})
    if not ids:
        raise ReconcileError({"findings": "select at least one finding"})
    findings = list(
        Finding.objects.filter(rollback=rollback, pk__in=ids).select_related(
            "system", "result__contract", "rollback"
        )
    )
    if len(findings) != len(ids):
        unknown = sorted(set(ids) - {f.pk for f in findings})
        raise ReconcileError({"findings": f"no such finding on this rollback: {unknown}"})
    for finding in findings:
        _require_finding_operator(actor, finding, "reconcile.followup_add")
        if not finding.compensation:
            raise ReconcileError(
                {
                    "findings": f"finding #{finding.pk} has no suggested compensation"
                    + (f": {finding.compensation_error}" if finding.compensation_error else "")
                }
            )
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=rollback.pk)
        if not rollback.is_terminal:
            raise ReconcileError(
                {
                    "state": f"rollback #{rollback.pk} is {rollback.get_state_display()}: "
                    "a follow-up stage is added once it has ended"
                }
            )
        if rollback.steps.filter(state=Step.State.RUNNING).exists():
            raise ReconcileError({"state": "a step is still running: wait until it has finished"})
        decided = Finding.objects.filter(pk__in=ids, status=F.OPEN).update(
            status=F.ADDED, decided_by=actor, decided_at=timezone.now()
        )
        if decided != len(ids):
            raise ReconcileError({"findings": "a selected finding is no longer open"})
        # An aborted rollback may leave a stage running or halted; it is over.
        for stage in rollback.stages.exclude(
            state__in=(Stage.State.SUCCEEDED, Stage.State.CANCELLED)
        ):
            Stage.objects.filter(pk=stage.pk).update(
                state=Stage.State.CANCELLED, finished_at=timezone.now()
            )
            ledger.record(
                actor=actor,
                action="stage.closed",
                subject=stage,
                rollback_id=rollback.pk,
                trace_id=rollback.trace_id,
                reason="the rollback had ended; a follow-up stage comes after it",
                payload={"index": stage.index, "was": stage.state},
            )
        index = (rollback.stages.aggregate(m=Max("index"))["m"] or 0) + 1
        stage = Stage.objects.create(rollback=rollback, index=index)
        anchors = {}
        for step in rollback.steps.order_by("id"):
            anchors.setdefault(step.system_id, step.forward_action_id)
        for finding in findings:
            check = _check_spec(finding)
            comp = finding.compensation
            step = Step.objects.create(
                rollback=rollback,
                stage=stage,
                # Steps need a forward action: the first one the rollback undid on this system.
                forward_action_id=anchors[finding.system_id],
                system=finding.system,
                contract=finding.result.contract,
                kind=comp["kind"],
                is_manual=comp["kind"] == "manual",
                manual_reason="the suggested compensation is manual"
                if comp["kind"] == "manual"
                else "",
                spec=comp,
                idempotency_key=f"unwind-reconcile-{finding.pk}",
                max_attempts=check.get("attempts", 3),
                timeout_s=check.get("timeout_s", 30.0),
            )
            Finding.objects.filter(pk=finding.pk).update(followup_step=step)
        ledger.record(
            actor=actor,
            action="reconcile.followup_added",
            subject=stage,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            payload={
                "stage": index,
                "findings": ids,
                "steps": list(stage.steps.values_list("pk", flat=True)),
            },
        )
        engine.rollback_reopen(
            rollback=rollback,
            actor=actor,
            reason=f"follow-up stage {index} from {len(ids)} reconciliation finding"
            + "s" * (len(ids) != 1),
        )
    return stage


def _check_spec(finding: Finding) -> dict:
    contract = finding.result.contract
    for check in contract.reconciliation if contract else []:
        if check.get("name") == finding.check_name:
            return check
    return {}


# Reading ------------------------------------------------------------------------------------


WAIT_FOR_FIRST_RUN = timedelta(minutes=10)
LONG_VALUE = 80  # characters: a longer list or object is shown indented, in a scrolling box  # after the end, then the panel stands still


def panel(rollback: Rollback, user: Any) -> dict[str, Any]:
    """What the rollback page shows: the newest reconciliation, its results and findings."""
    latest = rollback.reconciliations.order_by("-requested_at", "-id").first()
    done = rollback.reconciliations.filter(state=Q.DONE).order_by("-finished_at", "-id").first()
    findings = []
    results = []
    if done is not None:
        results = list(done.results.select_related("system", "contract"))
        findings = list(
            done.findings.select_related("system", "decided_by", "followup_step__stage")
        )
    actionable = set(
        Finding.objects.actionable_by(user)
        .filter(pk__in=[f.pk for f in findings])
        .values_list("pk", flat=True)
    )
    can_operate = access.can_operate(user, rollback)
    for finding in findings:
        finding.can_act = can_operate and finding.pk in actionable
        finding.details_rows = _labelled(finding.details)
        finding.compensation_rows = _labelled(finding.compensation)
    return {
        "latest": latest,
        "done": done,
        "results": results,
        "findings": findings,
        "can_operate": can_operate,
        "can_add": rollback.is_terminal
        and any(f.can_act and f.status == F.OPEN and f.compensation for f in findings),
        "is_pending": latest is not None and latest.is_pending,
        # Not reconciled yet: the panel polls until the checks are queued after the end.
        "is_waiting": latest is None
        and (
            not rollback.is_terminal
            or rollback.finished_at is None
            or timezone.now() - rollback.finished_at < WAIT_FOR_FIRST_RUN
        ),
    }


def _labelled(value: Any) -> list[tuple[str, str]]:
    """A finding's details or compensation as labelled fields (``Order id: 1001``): a
    scalar as it is, a list or object as compact JSON."""
    if not isinstance(value, dict):
        return [("Value", json.dumps(value))] if value not in (None, "") else []
    rows = []
    for key, item in sorted(value.items()):
        text = item if isinstance(item, str) else json.dumps(item, sort_keys=True)
        if len(text) > LONG_VALUE and not isinstance(item, str):  # one field a line
            text = json.dumps(item, sort_keys=True, indent=2)
        rows.append((str(key).replace("_", " ").capitalize(), text))
    return rows
