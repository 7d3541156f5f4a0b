"""rollbacks/outcome.py words a summary stored before the engine wrote a drill's own words."""

from __future__ import annotations

from rollbacks.models import Rollback
from rollbacks.outcome import in_words

OLD = "Undone: 2 of 3 steps. Not undone: create_order on orders-api: failed — boom."


def test_an_old_drill_summary_is_read_as_rehearsed():
    drill = Rollback(is_drill=True, outcome_summary=OLD)
    assert in_words(drill, ran_for_real=False) == (
        "Rehearsed: 2 of 3 steps (a drill: nothing in production was touched). "
        "Not rehearsed: create_order on orders-api: failed — boom."
    )


def test_a_real_rollback_or_a_drill_on_rehearsal_targets_keeps_its_words():
    assert in_words(Rollback(is_drill=False, outcome_summary=OLD)) == OLD
    assert in_words(Rollback(is_drill=True, outcome_summary=OLD), ran_for_real=True) == OLD
    new = "Rehearsed: 1 of 1 steps (a drill: nothing in production was touched)."
    assert in_words(Rollback(is_drill=True, outcome_summary=new), ran_for_real=False) == new
