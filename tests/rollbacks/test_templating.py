"""Rendering compensation templates: no code execution, values escaped for their place."""

from __future__ import annotations

import pytest

from rollbacks.templating import TemplateError, render_compensation, render_url, render_value

CTX = {
    "params": {"order_id": "7", "amount": 1250, "customer": {"id": 42, "tier": "gold"}},
    "before": {"status": "paid"},
    "after": None,
    "action": {"id": 3, "type": "create_order", "idempotency_key": "fwd-3", "system": "orders"},
    "run": {"id": 1, "external_id": "run-9", "process": "checkout", "trace_id": "abc"},
    "rollback": {"id": 5, "reason": "bad deploy", "requested_by": "alice", "is_drill": False},
    "step": {"id": 11, "idempotency_key": "rb-5-step-11"},
}


def _ctx(**params):
    return CTX | {"params": params}


def test_path_traversal_in_a_url_value_is_quoted_as_one_segment():
    url = render_url(
        "http://orders/api/orders/{params.order_id}/cancel",
        _ctx(order_id="../../admin/drop?all=1#x"),
    )
    assert url == "http://orders/api/orders/..%2F..%2Fadmin%2Fdrop%3Fall%3D1%23x/cancel"


def test_url_values_that_are_not_strings_are_quoted_too():
    assert render_url("http://h/{params.customer}/{rollback.is_drill}", CTX) == (
        "http://h/%7B%22id%22%3A%2042%2C%20%22tier%22%3A%20%22gold%22%7D/false"
    )


def test_a_whole_template_keeps_the_value_type():
    assert render_value("{params.amount}", CTX) == 1250
    assert render_value("{params.customer}", CTX) == {"id": 42, "tier": "gold"}
    assert render_value("{rollback.is_drill}", CTX) is False


def test_nested_keys_and_text_inside_a_string():
    assert render_value("{params.customer.id}", CTX) == 42
    assert render_value("refund {params.amount} to {params.customer.tier}", CTX) == (
        "refund 1250 to gold"
    )


def test_dicts_and_lists_are_rendered_recursively_and_literal_braces_survive():
    body = {"order": "{params.order_id}", "lines": [{"amount": "{params.amount}"}], "n": 3}
    assert render_value(body, CTX) == {"order": "7", "lines": [{"amount": 1250}], "n": 3}
    assert render_value("{{not a template}}", CTX) == "{not a template}"


@pytest.mark.parametrize(
    "template", ["{params.missing}", "{before.total}", "{after.status}", "{params.customer.x}"]
)
def test_a_missing_field_is_a_template_error(template):
    with pytest.raises(TemplateError, match=f"^{template}: no such field$".replace(".", r"\.")):
        render_value(template, CTX)
    assert issubclass(TemplateError, ValueError)


@pytest.mark.parametrize(
    "template",
    [
        "{params.__class__}",
        "{params.order_id.__class__.__mro__}",
        "{params._secret}",
        "{params[order_id]}",
        "{os.environ}",
        "{params}",
        "{}",
        "{0}",
    ],
)
def test_attribute_access_indexing_and_unknown_roots_are_missing_fields(template):
    with pytest.raises(TemplateError, match="no such field"):
        render_value(template, _ctx(_secret="hidden", order_id="7"))


@pytest.mark.parametrize("template", ["{params.order_id!r}", "{params.amount:>99999}"])
def test_conversions_and_format_specs_are_refused(template):
    with pytest.raises(TemplateError, match="conversions and format specs"):
        render_value(template, CTX)


def test_http_compensation_renders_url_headers_and_body_by_place():
    spec = {
        "kind": "http",
        "method": "POST",
        "url": "http://orders/{params.order_id}/cancel",
        "headers": {"X-Customer": "{params.customer.id}"},
        "body": {"reason": "{rollback.reason}", "amount": "{params.amount}"},
        "expect_status": [200, 204],
    }
    rendered = render_compensation(spec, _ctx(order_id="a/b", amount=5, customer={"id": 9}))
    assert rendered == {
        "kind": "http",
        "method": "POST",
        "url": "http://orders/a%2Fb/cancel",
        "headers": {"X-Customer": "9"},
        "body": {"reason": "bad deploy", "amount": 5},
        "expect_status": [200, 204],
    }
    assert spec["url"] == "http://orders/{params.order_id}/cancel"  # the input is untouched


def test_a_header_value_cannot_add_a_header():
    spec = {"kind": "http", "url": "http://h/", "headers": {"X-Note": "{params.note}"}}
    with pytest.raises(TemplateError, match="line break"):
        render_compensation(spec, _ctx(note="x\r\nX-Admin: yes"))


def test_sql_params_are_typed_and_the_statement_is_not_templated():
    spec = {
        "kind": "sql",
        "database": "orders",
        "statement": "UPDATE orders SET total = total + %(amount)s WHERE id = %(id)s",
        "params": {"amount": "{params.amount}", "id": "{params.order_id}"},
    }
    rendered = render_compensation(spec, CTX)
    assert rendered["params"] == {"amount": 1250, "id": "7"}
    assert rendered["statement"] == spec["statement"]


def test_a_template_in_a_sql_statement_is_refused():
    spec = {
        "kind": "sql",
        "database": "orders",
        "statement": "DELETE FROM t WHERE id = {params.id}",
    }
    with pytest.raises(TemplateError, match=r"pass the value in params and write %\(id\)s"):
        render_compensation(spec, _ctx(id="1; DROP TABLE t"))


def test_sql_restore_flag_manual_and_simulated():
    restore = {"kind": "sql_restore", "database": "orders", "table": "orders"}
    assert render_compensation(restore | {"key": {"id": "{params.amount}"}}, CTX)["key"] == {
        "id": 1250
    }
    flag = {"kind": "flag", "base_url": "http://flags", "feature": "{params.order_id}"}
    assert render_compensation(flag | {"environment": "prod"}, CTX)["feature"] == "7"
    manual = {"kind": "manual", "instructions": "Refund {params.amount} for {run.external_id}"}
    assert render_compensation(manual, CTX)["instructions"] == "Refund 1250 for run-9"
    simulated = {"kind": "simulated", "latency_ms": 10, "failure_rate": 0.5}
    assert render_compensation(simulated, CTX) == simulated


@pytest.mark.parametrize("value", ["..", "."])
def test_a_value_that_is_a_dot_segment_is_refused_not_resolved_away(value):
    """``..`` quotes to itself, and httpx sends ``/things/../cancel`` as ``/cancel``: the
    approver would approve one URL and the worker call another (issue 16, finding 5)."""
    spec = {"kind": "http", "url": "http://t/things/{params.id}/cancel"}
    with pytest.raises(TemplateError, match="path segment"):
        render_compensation(spec, _ctx(id=value))
    # A dot inside a segment is an ordinary name.
    assert render_compensation(spec, _ctx(id="v1..2"))["url"] == "http://t/things/v1..2/cancel"


@pytest.mark.parametrize("field", ["project", "feature", "environment"])
def test_a_flag_segment_that_is_a_dot_segment_is_refused(field):
    spec = {"kind": "flag", "base_url": "http://t/flags", "feature": "f", "environment": "e"}
    with pytest.raises(TemplateError, match=field):
        render_compensation(spec | {field: "{params.x}"}, _ctx(x=".."))
