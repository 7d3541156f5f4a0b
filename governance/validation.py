"""Checks of policy and trigger-rule fields, shared by the admin forms and the estate import.

Pure: each takes the parsed JSON value and returns it cleaned, or raises ValidationError
with messages that say what to write instead.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

from governance.alerts import matcher_errors
from governance.models import TriggerKind

TIERS = range(1, 5)
ATTESTATION_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus label names


def clean_tiers(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ValidationError("A list of tiers, e.g. [1, 2] (empty for any tier).")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v not in TIERS]
    if bad:
        raise ValidationError(
            f"Tiers are whole numbers from 1 (most critical) to 4: {', '.join(map(repr, bad))} is not."
        )
    return sorted(set(value))


def clean_environments(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError('A list of environment names, e.g. ["production"] (empty for any).')
    return sorted({v.strip() for v in value})


def clean_trigger_kinds(value: Any) -> list[str]:
    known = TriggerKind.values
    if not isinstance(value, list):
        raise ValidationError(f"A list of trigger kinds among {', '.join(known)} (empty for any).")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise ValidationError(
            f"Unknown trigger kind {', '.join(map(repr, unknown))}: use {', '.join(known)}."
        )
    return sorted(set(value))


def clean_attestations(value: Any) -> list[dict[str, str]]:
    shape = '[{"key": "pii", "label": "Personal data impact checked"}]'
    if not isinstance(value, list):
        raise ValidationError(f"A list of attestations, e.g. {shape}.")
    errors, keys, cleaned = [], set(), []
    for i, item in enumerate(value):
        where = f"attestation {i + 1}"
        if not isinstance(item, dict):
            errors.append(f"{where} must be an object with key and label, e.g. {shape}.")
            continue
        extra = sorted(set(item) - {"key", "label"})
        if extra:
            errors.append(f"{where}: unknown field {', '.join(extra)} (only key and label).")
        key, label = item.get("key"), item.get("label")
        if not isinstance(key, str) or not ATTESTATION_KEY.match(key):
            errors.append(f"{where}: key is required: lowercase letters, digits, - and _.")
        elif key in keys:
            errors.append(f"{where}: key {key!r} is listed twice.")
        else:
            keys.add(key)
        if not isinstance(label, str) or not label.strip():
            errors.append(f"{where}: label is required: what the approver attests.")
        if isinstance(key, str) and isinstance(label, str):
            cleaned.append({"key": key, "label": label.strip()})
    if errors:
        raise ValidationError(errors)
    return cleaned


def preapproval_errors(*, preapproves: bool, names_runbooks: bool, approvals: Any) -> dict:
    """A pre-approving policy names the runbook versions it pre-approves and asks for no
    approval itself: {field: message} for what is wrong (docs/runbooks.md)."""
    if not preapproves:
        return {}
    errors = {}
    if not names_runbooks:
        errors["runbooks"] = (
            "Name the runbook versions this policy pre-approves: it cannot pre-approve every runbook."
        )
    if approvals != 0:
        errors["approvals_required"] = (
            "A pre-approving policy asks for no approval itself: set it to 0."
        )
    return errors


def clean_match(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError(
            'A mapping of label names to matchers, e.g. {"alertname": "CheckoutErrorRate"}.'
        )
    errors = []
    for label, spec in value.items():
        if not LABEL_NAME.match(label):
            errors.append(f"{label!r} is not a label name (letters, digits and _).")
        if not isinstance(spec, str):
            errors.append(
                f"{label}: the matcher must be a string (a value, =~regex, !=value or !~regex), "
                f"not {json_type(spec)}."
            )
    if not errors:  # each matcher parses (a regular expression compiles…)
        errors = [f"{label}: {problem}" for label, problem in matcher_errors(value)]
    if errors:
        raise ValidationError(errors)
    return value


def json_type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), "null" if value is None else type(value).__name__)
