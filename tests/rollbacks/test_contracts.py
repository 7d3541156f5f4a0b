"""The shape of a contract's ``actions`` and of a health check: errors by path. No database."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rollbacks.contracts import format_errors, health_check_errors, validate_actions

DEMO = Path(__file__).resolve().parents[2] / "demo" / "estate.yaml"


def valid_actions() -> dict:
    return {
        "create_order": {
            "compensation": {
                "kind": "http",
                "method": "POST",
                "url": "http://127.0.0.1:9100/orders/{params.order_id}/cancel",
                "body": {"reason": "{rollback.reason}"},
                "headers": {"X-Run": "{run.trace_id}"},
            },
            "retryable": True,
            "attempts": 5,
            "backoff": {"initial_s": 0.5, "max_s": 30},
            "timeout_s": 10,
            "point_of_no_return": False,
            "verification": {
                "kind": "http",
                "url": "http://127.0.0.1:9100/orders/{params.order_id}",
                "expect_status": [404],
            },
        }
    }


def paths(errors) -> list[str]:
    return [path for path, _ in errors]


def error_at(errors, path) -> str:
    found = [message for p, message in errors if p == path]
    assert found, f"no error at {path!r}: {errors}"
    return found[0]


# --------------------------------------------------------------------------- valid contracts


def test_a_valid_contract_has_no_errors():
    assert validate_actions(valid_actions()) == []


def test_every_contract_in_the_demo_estate_is_valid():
    doc = yaml.safe_load(DEMO.read_text())
    assert len(doc["contracts"]) >= 7
    for contract in doc["contracts"]:
        assert validate_actions(contract["actions"]) == [], contract["system"]


@pytest.mark.parametrize(
    "compensation",
    [
        {
            "kind": "sql",
            "database": "orders",
            "statement": "DELETE FROM o WHERE id = %(id)s",
            "params": {"id": "{params.id}"},
        },
        {
            "kind": "sql_restore",
            "database": "orders",
            "table": "orders",
            "key": {"id": "{before.id}"},
        },
        {
            "kind": "flag",
            "base_url": "https://flags.example",
            "feature": "{params.flag}",
            "environment": "production",
            "project": "default",
        },
        {"kind": "manual", "instructions": "Refund {params.payment_id} by hand ({action.id})."},
        {"kind": "simulated"},
        {"kind": "simulated", "latency_ms": 0, "failure_rate": 1},
        {"kind": "http", "url": "https://x.example/{step.idempotency_key}/{after.state}"},
    ],
    ids=lambda c: c["kind"],
)
def test_each_compensation_kind_is_accepted_when_well_formed(compensation):
    assert validate_actions({"undo_me": {"compensation": compensation}}) == []


def test_point_of_no_return_without_compensation_is_allowed():
    assert validate_actions({"capture_payment": {"point_of_no_return": True}}) == []


def test_several_action_types_are_checked_each_under_its_own_name():
    actions = valid_actions()
    actions["refund"] = {"compensation": {"kind": "simulated"}, "attempts": 0}
    actions["void"] = {"compensation": {"kind": "nope"}}
    errors = validate_actions(actions)
    assert paths(errors) == ["refund.attempts", "void.compensation.kind"]


# --------------------------------------------------------------------------- errors by path


def test_missing_compensation_url_is_required():
    actions = valid_actions()
    del actions["create_order"]["compensation"]["url"]
    assert validate_actions(actions) == [("create_order.compensation.url", "is required")]


def test_backoff_max_below_initial_is_refused():
    actions = valid_actions()
    actions["create_order"]["backoff"] = {"initial_s": 5, "max_s": 1}
    errors = validate_actions(actions)
    assert paths(errors) == ["create_order.backoff.max_s"]
    assert "initial_s" in errors[0][1] and "5" in errors[0][1]


def test_backoff_max_equal_to_initial_is_allowed():
    actions = valid_actions()
    actions["create_order"]["backoff"] = {"initial_s": 2, "max_s": 2}
    assert validate_actions(actions) == []


def test_backoff_without_max_is_required():
    actions = valid_actions()
    actions["create_order"]["backoff"] = {"initial_s": 2}
    assert validate_actions(actions) == [("create_order.backoff.max_s", "is required")]


def test_unknown_compensation_kind_is_refused():
    actions = valid_actions()
    actions["create_order"]["compensation"]["kind"] = "carrier_pigeon"
    errors = validate_actions(actions)
    assert paths(errors) == ["create_order.compensation.kind"]
    for kind in ("http", "sql", "sql_restore", "flag", "manual", "simulated"):
        assert kind in errors[0][1]


def test_missing_compensation_kind_is_refused():
    actions = {"create_order": {"compensation": {"url": "http://x/"}}}
    assert paths(validate_actions(actions)) == ["create_order.compensation.kind"]


def test_missing_compensation_is_refused_unless_point_of_no_return():
    for spec in ({}, {"point_of_no_return": False}, {"retryable": True}):
        errors = validate_actions({"create_order": spec})
        assert paths(errors) == ["create_order.compensation"], spec
        assert "point_of_no_return" in errors[0][1]


def test_unknown_template_root_names_the_field():
    actions = valid_actions()
    actions["create_order"]["compensation"]["url"] = "http://x/{order.id}/cancel"
    errors = validate_actions(actions)
    assert paths(errors) == ["create_order.compensation.url"]
    assert "{order.id}" in errors[0][1] and "unknown root 'order'" in errors[0][1]


def test_unknown_rollback_field_names_the_field():
    actions = valid_actions()
    actions["create_order"]["compensation"]["body"] = {"reason": "{rollback.nope}"}
    errors = validate_actions(actions)
    assert paths(errors) == ["create_order.compensation.body"]
    assert "{rollback.nope}" in errors[0][1] and "'nope'" in errors[0][1]


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{params}", "say which field"),
        ("{before}", "say which field"),
        ("{action.nope}", "action has no field 'nope'"),
        ("{run}", "run has no field ''"),
        ("{}", "unknown root ''"),
        ("{params.x", "is not a valid template"),
        ("}", "is not a valid template"),
    ],
)
def test_bad_templates_are_refused_with_the_field_path(template, words):
    actions = {"x": {"compensation": {"kind": "manual", "instructions": template}}}
    errors = validate_actions(actions)
    assert paths(errors) == ["x.compensation.instructions"]
    assert words in errors[0][1]


def test_literal_braces_in_a_template_are_allowed():
    actions = {"x": {"compensation": {"kind": "manual", "instructions": "set {{x}} to {params.x}"}}}
    assert validate_actions(actions) == []


def test_template_in_a_verification_is_checked():
    actions = valid_actions()
    actions["create_order"]["verification"]["url"] = "http://x/{rollback.nope}"
    assert paths(validate_actions(actions)) == ["create_order.verification.url"]


def test_template_inside_a_list_is_checked():
    actions = {
        "x": {
            "compensation": {
                "kind": "sql",
                "database": "d",
                "statement": "s",
                "params": {"ids": ["{params.a}", "{nope.b}"]},
            }
        }
    }
    assert paths(validate_actions(actions)) == ["x.compensation.params"]


def test_template_in_a_verification_is_checked_without_a_compensation():
    actions = {
        "capture": {
            "point_of_no_return": True,
            "verification": {"kind": "http", "url": "http://x/{rollback.nope}"},
        }
    }
    assert paths(validate_actions(actions)) == ["capture.verification.url"]


@pytest.mark.parametrize(
    "template", ["{params.x!r}", "{params.x:>10}", "{params.x:{rollback.nope}}"]
)
def test_a_conversion_or_format_spec_in_a_template_is_refused(template):
    actions = {"x": {"compensation": {"kind": "manual", "instructions": template}}}
    assert paths(validate_actions(actions)) == ["x.compensation.instructions"]


def test_a_template_in_a_sql_statement_is_refused():
    actions = {
        "x": {
            "compensation": {
                "kind": "sql",
                "database": "orders",
                "statement": "DELETE FROM o WHERE id = {params.id}",
            }
        }
    }
    assert paths(validate_actions(actions)) == ["x.compensation.statement"]


def test_unknown_field_of_an_action_is_refused():
    actions = valid_actions()
    actions["create_order"]["retries"] = 3
    errors = validate_actions(actions)
    assert paths(errors) == ["create_order"]
    assert "unknown fields" in errors[0][1] and "retries" in errors[0][1]


def test_unknown_field_of_a_compensation_is_refused():
    actions = {"x": {"compensation": {"kind": "simulated", "flakiness": 1}}}
    errors = validate_actions(actions)
    assert paths(errors) == ["x.compensation"]
    assert "flakiness" in errors[0][1]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"attempts": 0}, "create_order.attempts"),
        ({"attempts": 101}, "create_order.attempts"),
        ({"attempts": "5"}, "create_order.attempts"),
        ({"retryable": "yes"}, "create_order.retryable"),
        ({"timeout_s": 0}, "create_order.timeout_s"),
        ({"point_of_no_return": 1}, "create_order.point_of_no_return"),
        ({"verification": {"kind": "smoke"}}, "create_order.verification.kind"),
        ({"verification": {"url": "http://x/"}}, "create_order.verification.kind"),
        ({"backoff": {"initial_s": 0, "max_s": 1}}, "create_order.backoff.initial_s"),
        (
            {"backoff": {"initial_s": 1, "max_s": 2, "multiplier": 0.5}},
            "create_order.backoff.multiplier",
        ),
    ],
)
def test_out_of_range_action_fields_name_their_path(change, path):
    actions = valid_actions()
    actions["create_order"].update(change)
    assert paths(validate_actions(actions)) == [path]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"method": "YEET"}, "create_order.compensation.method"),
        ({"url": "ftp://x/"}, "create_order.compensation.url"),
        ({"expect_status": []}, "create_order.compensation.expect_status"),
        ({"expect_status": [200, 700]}, "create_order.compensation.expect_status.1"),
        ({"headers": {"X-A": 1}}, "create_order.compensation.headers.X-A"),
    ],
)
def test_bad_http_compensation_fields_name_their_path(change, path):
    actions = valid_actions()
    actions["create_order"]["compensation"].update(change)
    assert paths(validate_actions(actions)) == [path]


def test_sql_restore_table_must_be_an_identifier():
    actions = {
        "x": {
            "compensation": {
                "kind": "sql_restore",
                "database": "d",
                "table": "orders; DROP TABLE x",
                "key": {"id": 1},
            }
        }
    }
    assert paths(validate_actions(actions)) == ["x.compensation.table"]


def test_every_error_is_reported_not_just_the_first():
    actions = valid_actions()
    del actions["create_order"]["compensation"]["url"]
    actions["create_order"]["attempts"] = 0
    actions["create_order"]["backoff"] = {"initial_s": 5, "max_s": 1}
    assert sorted(paths(validate_actions(actions))) == [
        "create_order.attempts",
        "create_order.backoff.max_s",
        "create_order.compensation.url",
    ]


@pytest.mark.parametrize("actions", [None, [], "create_order", 3, [{"create_order": {}}]])
def test_actions_that_are_not_a_mapping_are_refused(actions):
    errors = validate_actions(actions)
    assert errors == [("", "must be a mapping of action type to its compensation")]


def test_empty_actions_are_refused():
    errors = validate_actions({})
    assert paths(errors) == [""]
    assert "at least one" in errors[0][1]


@pytest.mark.parametrize("action_type", ["Create", "1st", "", "a b", "x" * 101, 7])
def test_bad_action_type_names_are_refused(action_type):
    errors = validate_actions({action_type: {"point_of_no_return": True}})
    assert errors == [(str(action_type), "is not a valid action type (lowercase, a-z0-9_.-)")]


@pytest.mark.parametrize("spec", [None, "http", [1], 3])
def test_an_action_spec_that_is_not_a_mapping_is_refused(spec):
    errors = validate_actions({"x": spec})
    assert paths(errors) == ["x"]


def test_a_compensation_that_is_not_a_mapping_is_refused():
    assert paths(validate_actions({"x": {"compensation": "call them"}})) == ["x.compensation"]


def test_validation_does_not_change_its_input():
    actions = valid_actions()
    actions["create_order"]["backoff"]["max_s"] = 0.1
    before = copy.deepcopy(actions)
    validate_actions(actions)
    assert actions == before


def test_format_errors_prefixes_each_path():
    errors = [("create_order.backoff.max_s", "must be at least initial_s (5)"), ("", "is empty")]
    assert format_errors(errors, "actions") == [
        "actions.create_order.backoff.max_s: must be at least initial_s (5)",
        "actions: is empty",
    ]
    assert format_errors([("", "x")]) == ["actions: x"]


# --------------------------------------------------------------------------- health checks


@pytest.mark.parametrize(
    "check",
    [
        None,
        {},
        {"http": "http://127.0.0.1:9100/health"},
        {"http": "https://x.example/h"},
        {"sql": "orders"},
    ],
)
def test_good_health_checks_have_no_errors(check):
    assert health_check_errors(check) == []


@pytest.mark.parametrize(
    ("check", "words"),
    [
        ({"http": "ftp://x/health"}, "http: must be an http:// or https:// URL"),
        ({"http": 80}, "http: must be an http:// or https:// URL"),
        ({"http": ""}, "http: must be an http:// or https:// URL"),
        ({"sql": ""}, "sql: must name a target database"),
        ({"sql": None}, "sql: must name a target database"),
        ({"tcp": "x:1"}, "unknown kind 'tcp': use http or sql"),
        ({"http": "http://x/", "sql": "orders"}, "must be {} or one of"),
        ("http://x/health", "must be {} or one of"),
        ([], "must be {} or one of"),
        (0, "must be {} or one of"),
    ],
)
def test_bad_health_checks_are_refused(check, words):
    errors = health_check_errors(check)
    assert len(errors) == 1
    assert words in errors[0]


@pytest.mark.parametrize(
    ("expect_rows", "is_valid"),
    [(1, True), (0, True), ({"min": 1}, True), ({"min": 1, "max": 5}, True),
     (-1, False), ("1", False), ({}, False), ({"exactly": 1}, False), ({"min": -2}, False)],
)  # fmt: skip
def test_a_sql_compensation_may_say_how_many_rows_a_correct_undo_changes(expect_rows, is_valid):
    actions = {
        "x": {
            "compensation": {
                "kind": "sql",
                "database": "orders",
                "statement": "DELETE FROM o WHERE id = %(id)s",
                "params": {"id": "{params.id}"},
                "expect_rows": expect_rows,
            }
        }
    }
    errors = validate_actions(actions)
    assert (errors == []) is is_valid, errors
    if not is_valid:
        assert paths(errors) == ["x.compensation.expect_rows"]
