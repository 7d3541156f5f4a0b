"""A rollback's outcome summary as a person reads it, wherever it is shown (the report,
escalations).

A drill's steps were rehearsed, not undone — unless some ran on rehearsal targets, where
they were undone for real — so its summary says "Rehearsed: 9 of 9 steps" (issue 15).
The engine writes it so (``engine.base.write_summary``); this module also words the
summaries stored before it did ("Undone: 9 of 9 steps. Not undone: …" for every rollback).
"""

from __future__ import annotations

from rollbacks.models import Rollback, Step

UNDONE = "Undone: "
NOT_UNDONE = " Not undone: "


def ran_on_rehearsal_targets(rollback: Rollback) -> bool:
    """Whether a step of this drill ran its real compensation on a rehearsal target. One query."""
    return Step.objects.filter(
        rollback=rollback, system__is_rehearsal=True, is_manual=False
    ).exists()


def in_words(rollback: Rollback, *, ran_for_real: bool | None = None) -> str:
    """The outcome summary, in a drill's words when it is one; ``ran_for_real``: whether
    some steps ran on rehearsal targets, when the caller knows (else one query, drills only)."""
    text = rollback.outcome_summary
    if not rollback.is_drill or not text.startswith(UNDONE):
        return text
    if ran_for_real is None:
        ran_for_real = ran_on_rehearsal_targets(rollback)
    if ran_for_real:
        return text  # undone on the rehearsal targets: the engine's words are true
    counted, _, not_done = text.removeprefix(UNDONE).partition(NOT_UNDONE)
    said = f"Rehearsed: {counted.rstrip('.')} (a drill: nothing in production was touched)."
    return said + (f" Not rehearsed: {not_done}" if not_done else "")
