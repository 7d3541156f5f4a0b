"""Writes of the drills app: add and remove a drill's faults, each with its ledger entry.

Faults are refused on anything that is not a drill, and once a drill has started (the
plan is what people approved; faults are part of the plan). Errors name the field.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

import ledger.services as ledger
from drills.models import MAX_SLOW_S, MAX_TIMES, Fault
from rollbacks import access
from rollbacks.models import Rollback, Step

R = Rollback.State
# Faults may change until the drill starts: draft, awaiting approval, approved.
EDITABLE = (R.DRAFT, R.AWAITING_APPROVAL, R.APPROVED)
KINDS = tuple(Fault.Kind.values)


def _require_editable(rollback: Rollback, field: str = "faults") -> None:
    if not rollback.is_drill:
        raise ValidationError(
            {
                field: f"faults can be injected into drills only: rollback #{rollback.pk} is not a drill"
            }
        )
    if rollback.state not in EDITABLE:
        raise ValidationError(
            {
                field: f"drill #{rollback.pk} is {rollback.get_state_display()}: "
                "faults can be changed only before it starts"
            }
        )


def fault_errors(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """What is wrong with one fault's settings (``kind``, ``times``, ``permanent``,
    ``seconds``), by field name."""
    errors: dict[str, str] = {}
    kind = spec.get("kind")
    if kind not in KINDS:
        errors[prefix + "kind"] = f"must be one of {', '.join(KINDS)}"
    times = spec.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_TIMES:
        errors[prefix + "times"] = f"must be a whole number from 1 to {MAX_TIMES}"
    seconds = spec.get("seconds", 0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= MAX_SLOW_S
    ):
        errors[prefix + "seconds"] = f"must be a number of seconds from 0 to {MAX_SLOW_S:g}"
    elif kind == Fault.Kind.SLOW and not seconds:
        errors[prefix + "seconds"] = "a slow-down needs its seconds (more than 0)"
    if not isinstance(spec.get("permanent", False), bool):
        errors[prefix + "permanent"] = "must be true or false"
    elif spec.get("permanent") and kind != Fault.Kind.FAIL:
        errors[prefix + "permanent"] = "only a failing step can fail permanently"
    return errors


def _step_errors(rollback: Rollback, step: Step | None, field: str) -> dict[str, str]:
    if step is None or step.rollback_id != rollback.pk:
        return {field: f"no such step in drill #{rollback.pk}"}
    if step.is_manual:
        return {field: f"step #{step.pk} is manual: a human does it, there is nothing to fault"}
    return {}


def _create(rollback: Rollback, step: Step, spec: dict[str, Any], actor: Any) -> Fault:
    fault = Fault.objects.create(
        rollback=rollback,
        step=step,
        kind=spec["kind"],
        is_permanent=bool(spec.get("permanent", False)),
        times=spec.get("times", 1),
        seconds=float(spec.get("seconds", 0)),
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    ledger.record(
        actor=actor,
        action="drill.fault.added",
        subject=step,
        rollback_id=rollback.pk,
        trace_id=rollback.trace_id,
        reason=f"step #{step.pk} {fault.describe()}",
        payload={"is_drill": True} | fault_payload(fault),
    )
    return fault


def fault_payload(fault: Fault) -> dict[str, Any]:
    return {
        "fault": fault.pk,
        "step": fault.step_id,
        "kind": fault.kind,
        "permanent": fault.is_permanent,
        "times": fault.times,
        "seconds": fault.seconds,
    }


def fault_add(
    *,
    rollback: Rollback,
    actor: Any,
    step_id: int,
    kind: str,
    times: int = 1,
    permanent: bool = False,
    seconds: float = 0,
) -> Fault:
    """Add one fault to a drill that has not started."""
    access.require_operator(actor, rollback, "drill.fault.add")
    spec = {"kind": kind, "times": times, "permanent": permanent, "seconds": seconds}
    errors = fault_errors(spec)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=rollback.pk)
        _require_editable(rollback)
        step = Step.objects.filter(pk=step_id).first()
        errors = _step_errors(rollback, step, "step")
        if errors:
            raise ValidationError(errors)
        return _create(rollback, step, spec, actor)


def fault_remove(*, fault: Fault, actor: Any) -> None:
    """Take a fault off a drill that has not started."""
    rollback = fault.rollback
    access.require_operator(actor, rollback, "drill.fault.remove")
    with transaction.atomic():
        rollback = Rollback.objects.select_for_update().get(pk=rollback.pk)
        _require_editable(rollback)
        deleted, _ = Fault.objects.filter(pk=fault.pk).delete()
        if not deleted:
            raise ValidationError({"fault": f"fault #{fault.pk} was already removed"})
        ledger.record(
            actor=actor,
            action="drill.fault.removed",
            subject=fault.step,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=f"step #{fault.step_id} no longer {fault.describe()}",
            payload={"is_drill": True} | fault_payload(fault),
        )


def faults_plan(*, rollback: Rollback, faults: list[dict[str, Any]], actor: Any) -> list[Fault]:
    """The faults given with a drill's plan (the API's ``faults``), inside the plan's
    transaction: each names the forward ``action`` whose step it hits. Any error refuses
    the whole plan, naming ``faults[i].<field>``."""
    _require_editable(rollback)
    steps = {s.forward_action_id: s for s in rollback.steps.all()}
    errors: dict[str, str] = {}
    for i, spec in enumerate(faults):
        prefix = f"faults[{i}]."
        errors |= fault_errors(spec, prefix)
        errors |= _step_errors(rollback, steps.get(spec.get("action")), prefix + "action")
    if errors:
        raise ValidationError(errors)
    return [_create(rollback, steps[spec["action"]], spec, actor) for spec in faults]
