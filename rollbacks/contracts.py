"""The shape of a contract's ``actions`` and of a system's health check, with errors by path.

A contract maps forward action types to how they are undone::

    create_order:
      compensation: {kind: http, method: POST, url: "http://…/orders/{params.order_id}/cancel"}
      retryable: true
      attempts: 5
      backoff: {initial_s: 0.5, max_s: 30}
      timeout_s: 10
      point_of_no_return: false
      verification: {kind: http, url: "http://…/orders/{params.order_id}", expect_status: [404]}

Every error is a ``(path, message)`` pair, the path in dotted form from the contract's
``actions`` (``create_order.backoff.max_s``), so callers can prefix it with where the
contract sits (``contracts[2].actions.``).
"""

from __future__ import annotations

import re
import string
from typing import Any

from jsonschema import Draft202012Validator

COMPENSATION_KINDS = ("http", "sql", "sql_restore", "flag", "manual", "simulated")
# Roots a template may name: the forward action being undone, and the rollback undoing it.
TEMPLATE_ROOTS = {
    "params": None,  # any key: forward actions carry free-form parameters
    "before": None,
    "after": None,
    "action": {"id", "type", "idempotency_key", "system"},
    "run": {"id", "external_id", "process", "trace_id"},
    "rollback": {"id", "reason", "requested_by", "is_drill"},
    "step": {"id", "idempotency_key"},
}

_template = {"type": "string", "minLength": 1}
_compensations = {
    "http": {
        "properties": {
            "kind": {"const": "http"},
            "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
            "url": {"type": "string", "pattern": "^https?://"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {},
            "expect_status": {
                "type": "array",
                "items": {"type": "integer", "minimum": 100, "maximum": 599},
                "minItems": 1,
            },
        },
        "required": ["kind", "url"],
    },
    "sql": {
        "properties": {
            "kind": {"const": "sql"},
            "database": _template,
            "statement": _template,
            "params": {"type": "object"},
            # The row count a correct undo has: exactly n, or {min, max}; else the step fails.
            "expect_rows": {
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "min": {"type": "integer", "minimum": 0},
                            "max": {"type": "integer", "minimum": 0},
                        },
                    },
                ]
            },
        },
        "required": ["kind", "database", "statement"],
    },
    "sql_restore": {
        "properties": {
            "kind": {"const": "sql_restore"},
            "database": _template,
            "table": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            "key": {"type": "object", "minProperties": 1},
        },
        "required": ["kind", "database", "table", "key"],
    },
    "flag": {
        "properties": {
            "kind": {"const": "flag"},
            "base_url": {"type": "string", "pattern": "^https?://"},
            "project": _template,
            "feature": _template,
            "environment": _template,
        },
        "required": ["kind", "base_url", "feature", "environment"],
    },
    "manual": {
        "properties": {"kind": {"const": "manual"}, "instructions": _template},
        "required": ["kind", "instructions"],
    },
    "simulated": {
        "properties": {
            "kind": {"const": "simulated"},
            "latency_ms": {"type": "integer", "minimum": 0, "maximum": 600000},
            "failure_rate": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["kind"],
    },
}
for _schema in _compensations.values():
    _schema["type"] = "object"
    _schema["additionalProperties"] = False

ACTION_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "compensation": {"type": "object"},
        "retryable": {"type": "boolean"},
        "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "backoff": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "initial_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                "max_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                "multiplier": {"type": "number", "minimum": 1, "maximum": 10},
            },
            "required": ["initial_s", "max_s"],
        },
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "point_of_no_return": {"type": "boolean"},
        "verification": {
            "type": "object",
            "properties": {"kind": {"enum": ["http", "sql"]}},
            "required": ["kind"],
        },
    },
}
_ACTION_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
_action_validator = Draft202012Validator(ACTION_SCHEMA)
_compensation_validators = {k: Draft202012Validator(s) for k, s in _compensations.items()}

Error = tuple[str, str]


def _join(*parts: Any) -> str:
    return ".".join(str(p) for p in parts if p != "")


def _schema_errors(validator: Draft202012Validator, value: Any, prefix: str) -> list[Error]:
    errors = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = _join(prefix, *err.absolute_path)
        if err.validator == "required":
            missing = err.message.split("'")[1]
            errors.append((_join(path, missing), "is required"))
        elif err.validator == "additionalProperties":
            errors.append((path, err.message.replace("Additional properties", "unknown fields")))
        else:
            errors.append((path, err.message))
    return errors


def _template_parts(value: Any) -> list[tuple[str, str | None, str | None]]:
    """(field, format spec, conversion) of every ``{…}`` in a template, nested values too;
    a malformed template gives ``("!<why>", None, None)``."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _template_parts(v)]
    if isinstance(value, list):
        return [p for v in value for p in _template_parts(v)]
    if not isinstance(value, str):
        return []
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        return [(f"!{exc}", None, None)]
    return [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]


def template_fields(value: Any) -> list[str]:
    """Every ``{root.field}`` named in a template (strings inside dicts and lists too)."""
    return [field for field, _, _ in _template_parts(value)]


def template_errors(value: Any, path: str, roots: dict | None = None) -> list[Error]:
    """The same rules the renderer (``rollbacks/templating.py``) applies, checked at publish time.

    ``roots``: what a template may name (``TEMPLATE_ROOTS`` unless given): root -> the set of
    its fields, or None for any field."""
    roots = TEMPLATE_ROOTS if roots is None else roots
    errors = []
    for field, spec, conversion in _template_parts(value):
        if field.startswith("!"):
            errors.append((path, f"is not a valid template: {field[1:]}"))
            continue
        if spec or conversion:
            errors.append(
                (
                    path,
                    f"template {{{field}}}: conversions (!r) and format specs (:…) are not allowed",
                )
            )
            continue
        root, _, rest = field.partition(".")
        if root not in roots:
            allowed = ", ".join(sorted(roots))
            errors.append(
                (path, f"template names {{{field}}}: unknown root {root!r} (use {allowed})")
            )
        elif not rest and roots[root] is None:
            errors.append(
                (path, f"template names {{{field}}}: say which field, e.g. {{{root}.id}}")
            )
        elif roots[root] is not None and rest not in roots[root]:
            known = ", ".join(sorted(roots[root]))
            errors.append(
                (path, f"template names {{{field}}}: {root} has no field {rest!r} ({known})")
            )
    return errors


def validate_actions(actions: Any) -> list[Error]:
    """All the errors in a contract's ``actions`` mapping; an empty list when it is valid."""
    if not isinstance(actions, dict):
        return [("", "must be a mapping of action type to its compensation")]
    if not actions:
        return [("", "names no action type: a contract undoes at least one kind of action")]
    errors: list[Error] = []
    for action_type, spec in actions.items():
        if not isinstance(action_type, str) or not _ACTION_TYPE.match(action_type):
            errors.append((str(action_type), "is not a valid action type (lowercase, a-z0-9_.-)"))
            continue
        errors += _schema_errors(_action_validator, spec, action_type)
        if not isinstance(spec, dict):
            continue
        backoff = spec.get("backoff")
        if isinstance(backoff, dict):
            initial, maximum = backoff.get("initial_s"), backoff.get("max_s")
            if (
                isinstance(initial, int | float)
                and isinstance(maximum, int | float)
                and maximum < initial
            ):
                errors.append(
                    (_join(action_type, "backoff.max_s"), f"must be at least initial_s ({initial})")
                )
        # Verification templates are checked whatever the compensation is (or is not).
        if isinstance(spec.get("verification"), dict):
            for key, value in spec["verification"].items():
                errors += template_errors(value, _join(action_type, "verification", key))
        comp = spec.get("compensation")
        if comp is None:
            if not spec.get("point_of_no_return"):
                errors.append(
                    (
                        _join(action_type, "compensation"),
                        "is required unless point_of_no_return is true",
                    )
                )
            continue
        if not isinstance(comp, dict):
            continue
        errors += compensation_errors(comp, _join(action_type, "compensation"))
    return errors


def compensation_errors(
    comp: dict, path: str, *, kinds: tuple[str, ...] = COMPENSATION_KINDS, roots: dict | None = None
) -> list[Error]:
    """The errors of one compensation spec (a mapping with ``kind``) at ``path``."""
    kind = comp.get("kind")
    if kind not in kinds:
        return [(_join(path, "kind"), f"must be one of {', '.join(kinds)}")]
    errors = _schema_errors(_compensation_validators[kind], comp, path)
    for key, value in comp.items():
        if kind == "sql" and key == "statement" and template_fields(value):
            errors.append(
                (
                    _join(path, "statement"),
                    "must not contain templates: name values as %(name)s and fill them in params",
                )
            )
        elif key != "kind":
            errors += template_errors(value, _join(path, key), roots)
    return errors


# Reconciliation checks ---------------------------------------------------------------------
# A contract may list checks that compare a system's actual state with what a rollback meant
# to leave (docs/reconciliation.md). Each finding a check reports carries the check's
# ``columns``; its suggested compensation is templated over them as ``{finding.<column>}``.

FINDING_CATEGORIES = (
    "stale_row",
    "duplicate_key",
    "orphaned_record",
    "in_flight_transaction",
    "other",
)
CHECK_KINDS = ("sql", "http")
# sql_restore needs a forward action's before/after images, which a finding does not have.
SUGGESTION_KINDS = ("http", "sql", "flag", "manual", "simulated")
# What a check's own templates may name (a finding does not exist yet).
CHECK_ROOTS = {"run": TEMPLATE_ROOTS["run"], "rollback": TEMPLATE_ROOTS["rollback"]}
HTTP_MATCH_COLUMNS = ("status", "body")  # the one finding of an http check without ``findings``
MAX_FINDINGS = 1000
_READ_QUERY = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)

_identifier_schema = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}
_check_common = {
    "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_.-]{0,99}$"},
    "kind": {"enum": list(CHECK_KINDS)},
    "category": {"enum": list(FINDING_CATEGORIES)},
    "description": {"type": "string", "minLength": 1, "maxLength": 500},
    "compensation": {"type": "object"},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
    "max_findings": {"type": "integer", "minimum": 1, "maximum": MAX_FINDINGS},
    "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
    "columns": {"type": "array", "items": _identifier_schema, "minItems": 1, "uniqueItems": True},
}
_check_required = ["name", "kind", "category", "description", "compensation"]
_checks = {
    "sql": {
        "properties": _check_common
        | {
            "database": _template,
            "query": {"type": "string", "minLength": 1},
            "params": {"type": "object"},
        },
        "required": [*_check_required, "database", "query", "columns"],
    },
    "http": {
        "properties": _check_common
        | {
            "method": {"enum": ["GET", "POST"]},
            "url": {"type": "string", "pattern": "^https?://"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {},
            "expect_status": _compensations["http"]["properties"]["expect_status"],
            "findings": {"type": "string", "pattern": r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)?$"},
            "expect_body": {},
        },
        "required": [*_check_required, "url"],
    },
}
for _schema in _checks.values():
    _schema["type"] = "object"
    _schema["additionalProperties"] = False
_check_validators = {k: Draft202012Validator(s) for k, s in _checks.items()}


def check_columns(check: dict) -> list[str]:
    """The fields every finding of a check has (what ``{finding.…}`` may name)."""
    if check.get("kind") == "http" and "findings" not in check:
        return list(HTTP_MATCH_COLUMNS)
    columns = check.get("columns")
    return [c for c in columns if isinstance(c, str)] if isinstance(columns, list) else []


def validate_reconciliation(checks: Any) -> list[Error]:
    """All the errors in a contract's ``reconciliation`` list; paths start with ``[i]``."""
    if checks in (None, []):
        return []
    if not isinstance(checks, list):
        return [("", "must be a list of checks")]
    errors: list[Error] = []
    names: dict[str, int] = {}
    for i, check in enumerate(checks):
        path = f"[{i}]"
        if not isinstance(check, dict):
            errors.append((path, "must be a mapping with name, kind, category, description, …"))
            continue
        kind = check.get("kind")
        if kind not in _check_validators:
            errors.append((_join(path, "kind"), f"must be one of {', '.join(CHECK_KINDS)}"))
            continue
        errors += _schema_errors(_check_validators[kind], check, path)
        name = check.get("name")
        if isinstance(name, str):
            if name in names:
                errors.append((_join(path, "name"), f"{name!r} repeats [{names[name]}].name"))
            names.setdefault(name, i)
        if kind == "sql":
            if isinstance(check.get("query"), str) and not _READ_QUERY.match(check["query"]):
                errors.append(
                    (_join(path, "query"), "must be a SELECT (or WITH …): checks only read")
                )
            if isinstance(check.get("query"), str) and template_fields(check["query"]):
                errors.append(
                    (
                        _join(path, "query"),
                        "must not contain templates: name values as %(name)s and fill them in params",
                    )
                )
            for key in ("database", "params"):
                errors += template_errors(check.get(key), _join(path, key), CHECK_ROOTS)
        else:
            if "findings" in check and "columns" not in check:
                errors.append(
                    (_join(path, "columns"), "is required with findings: the fields each has")
                )
            if "findings" not in check:
                if "columns" in check:
                    errors.append(
                        (
                            _join(path, "columns"),
                            "only with findings: a status/body check's finding has status and body",
                        )
                    )
            elif "expect_body" in check:
                errors.append(
                    (_join(path, "expect_body"), "use either findings or expect_body, not both")
                )
            for key in ("url", "headers", "body"):
                errors += template_errors(check.get(key), _join(path, key), CHECK_ROOTS)
        comp = check.get("compensation")
        if isinstance(comp, dict):
            roots = CHECK_ROOTS | {"finding": set(check_columns(check))}
            errors += compensation_errors(
                comp, _join(path, "compensation"), kinds=SUGGESTION_KINDS, roots=roots
            )
    return errors


def health_check_errors(check: Any) -> list[str]:
    if check in (None, {}):
        return []
    if not isinstance(check, dict) or len(check) != 1:
        return ['must be {} or one of {"http": "<url>"}, {"sql": "<target database>"}']
    ((kind, target),) = check.items()
    if kind == "http":
        if not isinstance(target, str) or not re.match(r"^https?://", target):
            return ["http: must be an http:// or https:// URL"]
        return []
    if kind == "sql":
        if not isinstance(target, str) or not target:
            return ["sql: must name a target database"]
        return []
    return [f"unknown kind {kind!r}: use http or sql"]


def format_errors(errors: list[Error], prefix: str = "") -> list[str]:
    return [f"{_join(prefix, path) or prefix or 'actions'}: {message}" for path, message in errors]


def format_reconciliation_errors(errors: list[Error], prefix: str = "reconciliation") -> list[str]:
    return [f"{prefix}{path}: {message}" for path, message in errors]
