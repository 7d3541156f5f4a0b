"""The checks of a runbook version and of the values given to it: each error names its field.
Pure functions: no database."""

from __future__ import annotations

import pytest

from runbooks.validation import clean_values, render_step_params, version_errors
from tests.runbooks.conftest import PARAMETERS, STEPS

CONTRACTS = {
    "flags": {"enable_flag": {}},
    "billing-api": {"create_invoice": {}},
    "billing-db": {"insert_ledger_row": {}},
    "bare": None,
}


def test_the_fixture_version_is_valid():
    assert version_errors(PARAMETERS, STEPS, CONTRACTS) == []


@pytest.mark.parametrize(
    ("parameters", "steps", "path", "message"),
    [
        (
            [],
            [{"system": "nowhere", "action_type": "x", "params": {}}],
            "steps[0].system",
            "unknown system 'nowhere'",
        ),
        (
            [],
            [{"system": "flags", "action_type": "enable_flag", "params": {"f": "{params.flag}"}}],
            "steps[0].params.f",
            "{params.flag}: no such field",
        ),
        (
            [{"name": "flag", "type": "float"}],
            STEPS[:1],
            "parameters[0].type",
            "must be one of string, int, choice, not 'float'",
        ),
        (
            [{"name": "row", "type": "int", "default": "12"}],
            [],
            "parameters[0].default",
            "must be a whole number (the parameter's type is int)",
        ),
        (
            [{"name": "mode", "type": "choice"}],
            STEPS[:1],
            "parameters[0].choices",
            "a choice needs a list of texts to choose from",
        ),
        (
            [{"name": "mode", "type": "choice", "choices": ["a"], "default": "b"}],
            STEPS[:1],
            "parameters[0].default",
            "must be one of a",
        ),
        (
            [{"name": "Bad Name", "type": "string"}],
            STEPS[:1],
            "parameters[0].name",
            "is required: lowercase letters, digits and _",
        ),
        (
            [{"name": "a", "type": "string"}, {"name": "a", "type": "int"}],
            STEPS[:1],
            "parameters[1].name",
            "'a' is declared twice",
        ),
        (
            [{"name": "a", "type": "string", "secret": True}],
            STEPS[:1],
            "parameters[0].secret",
            "unknown field",
        ),
        ([], [], "steps", "must be a non-empty list of steps"),
        (
            [],
            [{"system": "flags", "action_type": "drop_table", "params": {}}],
            "steps[0].action_type",
            "the contract of flags has no action 'drop_table' (it has: enable_flag)",
        ),
        (
            [],
            [{"system": "bare", "action_type": "x", "params": {}}],
            "steps[0].system",
            "bare has no contract: publish one first",
        ),
        (
            [],
            [{"system": "flags", "action_type": "enable_flag", "params": {"f": "{params.x!r}"}}],
            "steps[0].params.f",
            "conversions and format specs are not allowed",
        ),
    ],
)
def test_a_bad_version_is_refused_naming_the_field(parameters, steps, path, message):
    errors = version_errors(parameters, steps, CONTRACTS)
    assert any(p == path and message in m for p, m in errors), errors


def test_values_are_typed_and_defaults_filled():
    values, errors = clean_values(PARAMETERS, {"invoice_id": " inv-1 ", "row": "88"})
    assert errors == []
    assert values == {"flag": "new-checkout", "invoice_id": "inv-1", "row": 88, "mode": "void"}


@pytest.mark.parametrize(
    ("given", "path", "message"),
    [
        ({"row": 1}, "params.invoice_id", "is required"),
        (
            {"invoice_id": "i", "row": "eighty"},
            "params.row",
            "must be a whole number, not 'eighty'",
        ),
        ({"invoice_id": "i", "row": True}, "params.row", "must be a whole number"),
        (
            {"invoice_id": "i", "row": 1, "mode": "burn"},
            "params.mode",
            "must be one of void, refund",
        ),
        ({"invoice_id": 5, "row": 1}, "params.invoice_id", "must be text"),
        ({"invoice_id": "i", "row": 1, "extra": 1}, "params.extra", "unknown parameter"),
        ({"invoice_id": "i", "row": 2**60}, "params.row", "must be between"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(given, path, message):
    _, errors = clean_values(PARAMETERS, given)
    assert any(p == path and message in m for p, m in errors), errors


def test_step_params_keep_the_type_of_a_whole_template():
    values, _ = clean_values(PARAMETERS, {"invoice_id": "inv-1", "row": 88})
    assert render_step_params(STEPS[2], values) == {"id": 88}
    step = {"params": {"note": "row {params.row} of {params.invoice_id}"}}
    assert render_step_params(step, values) == {"note": "row 88 of inv-1"}


CONSTRAINED = [
    {"name": "order_id", "type": "int", "minimum": 1, "maximum": 10**9},
    {"name": "event_id", "type": "string", "pattern": "evt-[0-9]+"},
]


@pytest.mark.parametrize(
    ("given", "path", "message"),
    [
        ({"order_id": -5, "event_id": "evt-1"}, "params.order_id", "must be at least 1"),
        ({"order_id": 10**10, "event_id": "evt-1"}, "params.order_id", "must be at most"),
        ({"order_id": 7, "event_id": "evt-1; drop"}, "params.event_id", "must match the pattern"),
    ],
)
def test_parameter_constraints_refuse_values_outside_them(given, path, message):
    """An order id of -5 was instantiated and pre-approved at once (issue 16, finding 14)."""
    _, errors = clean_values(CONSTRAINED, given)
    assert [(p, m) for p, m in errors if p == path and message in m], errors
    assert clean_values(CONSTRAINED, {"order_id": 7, "event_id": "evt-7781"})[1] == []


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"name": "n", "type": "string", "minimum": 1}, "parameters[0].minimum", "only an int"),
        ({"name": "n", "type": "int", "minimum": "1"}, "parameters[0].minimum", "whole number"),
        (
            {"name": "n", "type": "int", "minimum": 5, "maximum": 1},
            "parameters[0].maximum",
            "at least the minimum",
        ),
        ({"name": "n", "type": "int", "pattern": "x"}, "parameters[0].pattern", "only a string"),
        (
            {"name": "n", "type": "string", "pattern": "("},
            "parameters[0].pattern",
            "not a regular expression",
        ),
        (
            {"name": "n", "type": "int", "minimum": 1, "default": 0},
            "parameters[0].default",
            "at least 1",
        ),
    ],
)
def test_a_bad_constraint_is_refused_naming_the_field(spec, path, message):
    steps = [{"system": "flags", "action_type": "enable_flag", "params": {}}]
    errors = version_errors([spec], steps, CONTRACTS)
    assert any(p == path and message in m for p, m in errors), errors
