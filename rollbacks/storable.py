"""What PostgreSQL can store, checked before it is asked to: a 400 naming the field instead
of a 500 at INSERT (FACTS.md: jsonb refuses ``Infinity`` and lone surrogates, text refuses NUL,
timestamptz refuses offsets beyond ±15:59)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any


class UnstorableJSON(ValueError):
    """JSON that parses but that PostgreSQL cannot store; ``field`` is its path (``params.x``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def string_problem(text: str) -> str:
    """Why PostgreSQL would refuse this text ('' when it would store it)."""
    if "\x00" in text:
        return "a string contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a string contains a lone UTF-16 surrogate (\\ud800-\\udfff), which cannot be stored"
    return ""


def refuse_unstorable(value: Any, path: str = "body") -> None:
    """Raise ``UnstorableJSON`` naming the first string, key or number PostgreSQL refuses."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if problem := string_problem(item):
                raise UnstorableJSON(where, problem)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnstorableJSON(where, "a number is too large (it overflows to infinity)")
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{key}" if where == "body" else f"{where}.{key}"
                if problem := string_problem(key):
                    raise UnstorableJSON(where, f"a key: {problem}")
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))


# PostgreSQL's timestamptz takes UTC offsets up to ±15:59 only (Python's datetime takes ±23:59).
MAX_UTC_OFFSET = timedelta(hours=15, minutes=59)


def time_problem(value: datetime | None) -> str:
    """Why PostgreSQL would refuse this aware datetime ('' when it would store it)."""
    if value is None or value.utcoffset() is None:
        return ""
    if abs(value.utcoffset()) > MAX_UTC_OFFSET:
        return "the time zone offset must be within ±15:59"
    try:
        value.astimezone(UTC)
    except OverflowError:
        return "the time is outside the years 1 to 9999 in UTC"
    return ""
