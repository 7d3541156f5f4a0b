"""The shape of a runbook version's ``parameters`` and ``steps``, and the cleaning of the
values an operator gives. Pure: the known systems and contracts are passed in.

Every error is a ``(path, message)`` pair naming the field (``steps[1].system``,
``parameters[0].default``), like contract errors (``rollbacks/contracts.py``).
"""

from __future__ import annotations

import re
from typing import Any

from rollbacks.templating import TemplateError, render_value

TYPES = ("string", "int", "choice")
PARAMETER_FIELDS = {
    "name", "type", "required", "default", "help", "label", "choices", "minimum", "maximum", "pattern",
}  # fmt: skip
MAX_PATTERN = 200
STEP_FIELDS = {"system", "action_type", "params"}
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
ACTION_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_STEPS = 50
MAX_STRING = 500
INT_LIMIT = 2**53  # JSON numbers every client reads exactly

Errors = list[tuple[str, str]]


def _value_error(spec: dict, value: Any) -> str | None:
    """Why ``value`` is not a value of the parameter, or None."""
    kind = spec.get("type")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        if not -INT_LIMIT < value < INT_LIMIT:
            return f"must be between -{INT_LIMIT} and {INT_LIMIT}"
        if spec.get("minimum") is not None and value < spec["minimum"]:
            return f"must be at least {spec['minimum']}"
        if spec.get("maximum") is not None and value > spec["maximum"]:
            return f"must be at most {spec['maximum']}"
    elif kind == "choice":
        if value not in (spec.get("choices") or []):
            return f"must be one of {', '.join(map(str, spec.get('choices') or []))}"
    elif not isinstance(value, str):
        return "must be text"
    elif len(value) > MAX_STRING:
        return f"must be at most {MAX_STRING} characters"
    elif spec.get("pattern") and re.fullmatch(spec["pattern"], value) is None:
        return f"must match the pattern {spec['pattern']}"
    return None


def _constraint_errors(path: str, spec: dict, kind: str) -> Errors:
    """``minimum``/``maximum`` (whole numbers, for an int) and ``pattern`` (for a string)."""
    errors: Errors = []
    for bound in ("minimum", "maximum"):
        if spec.get(bound) is None:
            continue
        value = spec[bound]
        if kind != "int":
            errors.append((f"{path}.{bound}", f"only an int has a {bound}, not a {kind}"))
        elif isinstance(value, bool) or not isinstance(value, int) or abs(value) >= INT_LIMIT:
            errors.append((f"{path}.{bound}", f"must be a whole number below {INT_LIMIT}"))
    low, high = spec.get("minimum"), spec.get("maximum")
    if not errors and kind == "int" and low is not None and high is not None and high < low:
        errors.append((f"{path}.maximum", f"must be at least the minimum ({low})"))
    pattern = spec.get("pattern")
    if pattern is not None:
        if kind != "string":
            errors.append((f"{path}.pattern", f"only a string has a pattern, not a {kind}"))
        elif not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            errors.append(
                (
                    f"{path}.pattern",
                    f"must be a regular expression of 1 to {MAX_PATTERN} characters",
                )
            )
        else:
            try:
                re.compile(pattern)
            except re.error as exc:
                errors.append((f"{path}.pattern", f"is not a regular expression: {exc}"))
    return errors


def parameter_errors(parameters: Any) -> Errors:
    if not isinstance(parameters, list):
        return [("parameters", "must be a list of parameters (empty for none)")]
    errors: Errors = []
    seen: set[str] = set()
    for i, spec in enumerate(parameters):
        path = f"parameters[{i}]"
        if not isinstance(spec, dict):
            errors.append((path, "must be a mapping with name and type"))
            continue
        for extra in sorted(set(spec) - PARAMETER_FIELDS):
            errors.append(
                (f"{path}.{extra}", f"unknown field (known: {', '.join(sorted(PARAMETER_FIELDS))})")
            )
        name = spec.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            errors.append((f"{path}.name", "is required: lowercase letters, digits and _"))
        elif name in seen:
            errors.append((f"{path}.name", f"{name!r} is declared twice"))
        else:
            seen.add(name)
        kind = spec.get("type")
        if kind not in TYPES:
            errors.append((f"{path}.type", f"must be one of {', '.join(TYPES)}, not {kind!r}"))
            continue
        choices = spec.get("choices")
        if kind == "choice":
            if (
                not isinstance(choices, list)
                or not choices
                or not all(isinstance(c, str) and c for c in choices)
            ):
                errors.append((f"{path}.choices", "a choice needs a list of texts to choose from"))
            elif len(set(choices)) != len(choices):
                errors.append((f"{path}.choices", "lists a choice twice"))
        elif choices is not None:
            errors.append((f"{path}.choices", f"only a choice has choices, not a {kind}"))
        constraint_errors = _constraint_errors(path, spec, kind)
        errors.extend(constraint_errors)
        for flag in ("required",):
            if flag in spec and not isinstance(spec[flag], bool):
                errors.append((f"{path}.{flag}", "must be true or false"))
        for text in ("help", "label"):
            if text in spec and not isinstance(spec[text], str):
                errors.append((f"{path}.{text}", "must be text"))
        if spec.get("default") is not None and not constraint_errors:
            problem = _value_error(spec, spec["default"])
            if problem:
                errors.append((f"{path}.default", f"{problem} (the parameter's type is {kind})"))
    return errors


def step_errors(steps: Any, parameters: list, contracts: dict[str, dict | None]) -> Errors:
    """``contracts``: every known system slug -> its newest contract's actions (None: none)."""
    if not isinstance(steps, list) or not steps:
        return [("steps", "must be a non-empty list of steps")]
    if len(steps) > MAX_STEPS:
        return [("steps", f"at most {MAX_STEPS} steps")]
    names = {
        p["name"] for p in parameters if isinstance(p, dict) and isinstance(p.get("name"), str)
    }
    probe = {"params": {name: "x" for name in names}}
    errors: Errors = []
    for i, step in enumerate(steps):
        path = f"steps[{i}]"
        if not isinstance(step, dict):
            errors.append((path, "must be a mapping with system, action_type and params"))
            continue
        for extra in sorted(set(step) - STEP_FIELDS):
            errors.append((f"{path}.{extra}", "unknown field (known: action_type, params, system)"))
        system, action_type = step.get("system"), step.get("action_type")
        if not isinstance(system, str) or system not in contracts:
            errors.append((f"{path}.system", f"unknown system {system!r}"))
        if not isinstance(action_type, str) or not ACTION_TYPE.match(action_type):
            errors.append((f"{path}.action_type", "is required: the forward action type"))
        elif isinstance(system, str) and system in contracts:
            errors.extend(coverage_errors(path, system, action_type, contracts[system]))
        params = step.get("params", {})
        if not isinstance(params, dict):
            errors.append((f"{path}.params", "must be a mapping of names to values or templates"))
            continue
        for key, value in params.items():
            try:
                render_value(value, probe)
            except TemplateError as exc:
                errors.append(
                    (
                        f"{path}.params.{key}",
                        f"{exc}: a template may name only the runbook's parameters "
                        f"({', '.join(sorted(names)) or 'none declared'}) as {{params.<name>}}",
                    )
                )
    return errors


def coverage_errors(path: str, system: str, action_type: str, actions: dict | None) -> Errors:
    if actions is None:
        return [(f"{path}.system", f"{system} has no contract: publish one first")]
    if action_type not in actions:
        known = ", ".join(sorted(actions)) or "none"
        return [
            (
                f"{path}.action_type",
                f"the contract of {system} has no action {action_type!r} (it has: {known})",
            )
        ]
    return []


def version_errors(parameters: Any, steps: Any, contracts: dict[str, dict | None]) -> Errors:
    errors = parameter_errors(parameters)
    return errors + step_errors(steps, parameters if not errors else [], contracts)


def clean_values(parameters: list[dict], given: Any) -> tuple[dict[str, Any], Errors]:
    """The values of an instantiation, typed, defaults filled in; errors by ``params.<name>``.

    Text from a form is accepted for an int (``"42"``); empty text counts as not given.
    """
    if not isinstance(given, dict):
        return {}, [("params", "must be a mapping of parameter names to values")]
    declared = {p["name"]: p for p in parameters}
    errors: Errors = [
        (f"params.{name}", "unknown parameter") for name in sorted(set(given) - set(declared))
    ]
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        value = given.get(name)
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                value = None
        if value is None:
            value = spec.get("default")
        if value is None:
            if spec.get("required", True):
                errors.append((f"params.{name}", "is required"))
            else:
                values[name] = None  # an optional parameter left out: templates get null
            continue
        if spec["type"] == "int" and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                errors.append((f"params.{name}", f"must be a whole number, not {value!r}"))
                continue
        problem = _value_error(spec, value)
        if problem:
            errors.append((f"params.{name}", problem))
        else:
            values[name] = value
    return values, errors


def render_step_params(step: dict, values: dict[str, Any]) -> dict[str, Any]:
    """A step's params with the templates filled (typed when a string is one template)."""
    return render_value(step.get("params") or {}, {"params": values})
