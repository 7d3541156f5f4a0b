"""What every part of the engine shares: its errors, its signal, the governance and drill
hooks it finds through settings, and the rollback's own transitions and summary."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.dispatch import Signal
from opentelemetry import trace

import ledger.services as ledger
from rollbacks.models import (
    Rollback,
    Step,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer("unwind.engine")


RUN_STEP = "rollbacks.tasks.run_step"
S = Step.State
R = Rollback.State


# Sent inside the transaction that moves a rollback to a terminal state (kwargs: rollback,
# actor); reconcile/ listens and queues its checks through the outbox.
rollback_ended = Signal()


class EngineError(ValidationError):
    """The action is not possible; built from {field: message} so callers can name the field
    (``state`` when the current state forbids it)."""


def governance():
    """The governance module (``settings.UNWIND_GOVERNANCE``), or None when none is set.

    Imports flow governance → rollbacks, so the engine finds it by name. It provides
    ``submit(rollback, actor) -> (needs_approval, why)``, ``may_start(rollback) -> (ok, why)``
    and ``stage_is_open(rollback, stage) -> bool``; optionally ``may_continue(rollback) ->
    why not`` ('' to go on), which the workers ask before each step (worker.refusal).
    """
    from importlib import import_module

    path = getattr(settings, "UNWIND_GOVERNANCE", "")
    return import_module(path) if path else None


def drill_hooks(*, required_for: str = ""):
    """The drills module (``settings.UNWIND_DRILLS``): a drill's faults. None when none is
    set; an ``EngineError`` naming ``required_for`` when the caller cannot do without it."""
    from importlib import import_module

    path = getattr(settings, "UNWIND_DRILLS", "")
    if not path and required_for:
        raise EngineError({required_for: "drills are not configured (UNWIND_DRILLS)"})
    return import_module(path) if path else None


# Transitions ---------------------------------------------------------------------------------

VERBS = {
    "started": "start",
    "paused": "pause",
    "resumed": "resume",
    "aborted": "abort",
    "retried": "retry",
    "skipped": "skip",
    "resolved": "resolve",
    "submitted": "submit",
    "reopened": "add a follow-up stage to it",
}


def verb(action: str) -> str:
    """'rollback.paused' -> 'pause', for messages that say what could not be done."""
    done = action.split(".")[-1]
    return VERBS.get(done, done)


def transition_rollback(
    rollback: Rollback, from_states, to_state, *, actor, action, reason="", **fields
) -> None:
    updated = Rollback.objects.filter(pk=rollback.pk, state__in=from_states).update(
        state=to_state, **fields
    )
    if not updated:
        current = Rollback.objects.values_list("state", flat=True).get(pk=rollback.pk)
        raise EngineError(
            {
                "state": f"rollback #{rollback.pk} is {Rollback.State(current).label}: cannot {verb(action)}"
            }
        )
    ledger.record(
        actor=actor,
        action=action,
        subject=rollback,
        rollback_id=rollback.pk,
        reason=reason,
        trace_id=rollback.trace_id,
        payload={"from": list(from_states), "to": to_state, "is_drill": rollback.is_drill},
    )
    rollback.state = to_state
    for k, v in fields.items():
        setattr(rollback, k, v)
    if to_state in Rollback.TERMINAL:
        rollback_ended.send(sender=Rollback, rollback=rollback, actor=actor)


def locked(rollback: Rollback) -> Rollback:
    return Rollback.objects.select_for_update().get(pk=rollback.pk)


def rollback_outcome(rollback: Rollback) -> dict[str, Any]:
    """What was undone and what was not, in words an operator reads at 3 a.m.; for a drill,
    also whether a step ran its real compensation on a rehearsal target (``for_real``)."""
    undone, not_undone = [], []
    for_real = False
    # Plain values, not model instances: every rollback that ends is summed up here, on
    # the execution loop's record path.
    rows = rollback.steps.order_by("stage__index", "id").values_list(
        "forward_action__action_type",
        "system__slug",
        "system__is_rehearsal",
        "state",
        "is_manual",
        "human_note",
        "last_error",
    )
    for action_type, slug, is_rehearsal, state, is_manual, human_note, last_error in rows:
        for_real = for_real or (is_rehearsal and not is_manual)
        what = f"{action_type} on {slug}"
        if state == S.SUCCEEDED:
            undone.append(what + (f" (by hand: {human_note})" if is_manual else ""))
        elif state == S.SKIPPED:
            not_undone.append(f"{what}: skipped — {human_note}")
        else:
            not_undone.append(
                f"{what}: {S(state).label}" + (f" — {last_error}" if last_error else "")
            )
    return {"undone": undone, "not_undone": not_undone, "for_real": for_real}


def write_summary(rollback: Rollback) -> None:
    """Store what was undone and what was not on the rollback (``rollback_outcome``). A
    drill's steps were rehearsed, not undone — unless some ran on rehearsal targets, where
    they were undone for real — and its summary says so."""
    outcome = rollback_outcome(rollback)
    done, missed = outcome["undone"], outcome["not_undone"]
    counted = f"{len(done)} of {len(done) + len(missed)} steps"
    if rollback.is_drill and not outcome["for_real"]:
        text = f"Rehearsed: {counted} (a drill: nothing in production was touched)."
        if missed:
            text += " Not rehearsed: " + "; ".join(missed) + "."
    else:
        text = f"Undone: {counted}."
        if missed:
            text += " Not undone: " + "; ".join(missed) + "."
    Rollback.objects.filter(pk=rollback.pk).update(outcome_summary=text)
    rollback.outcome_summary = text
