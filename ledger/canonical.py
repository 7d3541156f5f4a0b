"""The canonical form of a ledger entry and the hashes over it.

Pure Python (standard library only, no Django) so that ``python -m ledger.verify_export``
runs on any machine with Python and ``cryptography``.

An entry's hash is ``sha256(canonical(entry))`` where ``canonical`` is a JSON object with
every field but ``hash`` (``prev_hash`` included), keys sorted, no whitespace::

    {"action":"step.attempt.succeeded","actor":"worker","actor_user_id":null,
     "at":"2026-11-26T03:26:00.123456Z","chain":"rollback:12","id":4711,"outcome":"ok",
     "payload":{"system": "orders-db", "attempt": 1},"prev_hash":"9f…","reason":"",
     "rollback_id":12,"seq":7,"subject_id":"88","subject_type":"step","trace_id":"4bf9…"}

Strings are escaped as ``json.dumps(ensure_ascii=False)`` does, which is byte for byte what
PostgreSQL's ``to_json(text)`` does. The payload is written the way PostgreSQL prints a
``jsonb`` value (keys ordered by their UTF-8 length and then bytes, ``", "`` and ``": "``
separators, numbers as ``numeric`` prints them): a deterministic form that both Python
(``jsonb_text``) and PostgreSQL (``payload::text``) produce, so that the database can render
rows for verification and export at C speed while the hashing stays in Python
(``pg_canonical_sql``). Python's rendering is the definition; PostgreSQL's is a fast path
that verification checks against the stored hash and falls back from (docs/ledger.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

GENESIS = "0" * 64  # the prev_hash of the first entry of every chain

# Every hashed field, in sorted order (the order of the canonical JSON object).
FIELDS = (
    "action",
    "actor",
    "actor_user_id",
    "at",
    "chain",
    "id",
    "outcome",
    "payload",
    "prev_hash",
    "reason",
    "rollback_id",
    "seq",
    "subject_id",
    "subject_type",
    "trace_id",
)
INT_FIELDS = frozenset({"id", "seq"})
NULLABLE_INT_FIELDS = frozenset({"actor_user_id", "rollback_id"})
STRING_FIELDS = frozenset(FIELDS) - INT_FIELDS - NULLABLE_INT_FIELDS - {"at", "payload"}
# The columns of a CSV export, in order; JSON Lines carry the same fields and ``hash``.
CSV_COLUMNS = (
    "id",
    "at",
    "chain",
    "seq",
    "actor",
    "actor_user_id",
    "action",
    "subject_type",
    "subject_id",
    "rollback_id",
    "outcome",
    "reason",
    "trace_id",
    "payload",
    "prev_hash",
    "hash",
)
# Cells a spreadsheet would run as a formula start with one of these (OWASP CSV injection);
# a leading quote is escaped too, so that neutralising can be undone exactly.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")

_json_string = json.JSONEncoder(ensure_ascii=False).encode
_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class CanonicalError(ValueError):
    """A value that has no canonical form (a wrong type, NaN, a non-string key)."""


def format_at(value: datetime | str) -> str:
    """``2026-11-26T03:26:00.123456Z``: UTC, always six digits of microseconds."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise CanonicalError("a ledger time must be timezone-aware")
    return value.astimezone(UTC).strftime(_AT_FORMAT)


def _numeric(value: float) -> str:
    """A float as PostgreSQL ``numeric`` prints the text ``repr(value)``: no exponent,
    exactly as many decimals as the text implies (``1e-07`` → ``0.0000001``, ``1e+16`` →
    ``10000000000000000``, ``2.0`` → ``2.0``), and no negative zero."""
    if value != value or value in (float("inf"), float("-inf")):
        raise CanonicalError(f"{value!r} is not a JSON number")
    number = Decimal(repr(value))
    if number.is_zero():
        number = abs(number)
    return format(number, "f")


def _key_order(item: tuple[str, Any]) -> tuple[int, bytes]:
    raw = item[0].encode()
    return len(raw), raw


def jsonb_text(value: Any) -> str:
    """``value`` as PostgreSQL prints the ``jsonb`` it would store for ``json.dumps(value)``."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _numeric(value)
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError(f"a JSON object key must be a string, not {key!r}")
        items = sorted(value.items(), key=_key_order)
        return "{" + ", ".join(f"{_json_string(k)}: {jsonb_text(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    raise CanonicalError(f"{type(value).__name__} is not a JSON value")


def _render(name: str, value: Any) -> str:
    if name == "payload":
        return jsonb_text(value)
    if name == "at":
        if not isinstance(value, datetime | str):
            raise CanonicalError(f"at must be a time, not {value!r}")
        return _json_string(format_at(value))
    if name in INT_FIELDS or (name in NULLABLE_INT_FIELDS and value is not None):
        if not isinstance(value, int) or isinstance(value, bool):
            raise CanonicalError(f"{name} must be a whole number, not {value!r}")
        return str(value)
    if name in NULLABLE_INT_FIELDS:
        return "null"
    if not isinstance(value, str):
        raise CanonicalError(f"{name} must be a string, not {value!r}")
    return _json_string(value)


def canonical(entry: Mapping[str, Any], *, with_hash: str | None = None) -> str:
    """The canonical JSON text of an entry (``with_hash``: with its ``hash`` member too, as
    a line of a JSON Lines export is)."""
    parts = []
    for name in FIELDS:
        if name == "id" and with_hash is not None:
            parts.append('"hash":' + _json_string(with_hash))
        parts.append(f'"{name}":' + _render(name, entry[name]))
    return "{" + ",".join(parts) + "}"


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry).encode()).hexdigest()


def canonical_json(value: Any) -> bytes:
    """The bytes signed for checkpoints and manifests: sorted keys, no whitespace, ASCII
    (``json.dumps(value, sort_keys=True, separators=(",", ":"))`` in any Python)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


# CSV ------------------------------------------------------------------------------------------


def neutralise(cell: str) -> str:
    """Prefix ``'`` to a cell that a spreadsheet would run as a formula (and to one that
    already starts with ``'``, so that ``unneutralise`` is exact)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def unneutralise(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def csv_cells(entry: Mapping[str, Any], hash_: str, *, payload_text: str | None = None) -> list:
    """The neutralised cells of one CSV row (``payload_text``: the payload already rendered,
    as PostgreSQL gives it)."""
    cells = []
    for name in CSV_COLUMNS:
        if name == "hash":
            value = hash_
        elif name == "payload":
            value = payload_text if payload_text is not None else jsonb_text(entry["payload"])
        elif name == "at":
            value = format_at(entry["at"])
        else:
            value = entry[name]
        cells.append(neutralise("" if value is None else str(value)))
    return cells


def entry_from_csv(row: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """(entry fields, hash) from one row of a CSV export, read with ``csv.DictReader``."""
    cells = {name: unneutralise(row[name]) for name in CSV_COLUMNS}
    entry: dict[str, Any] = {}
    for name in FIELDS:
        cell = cells[name]
        if name in INT_FIELDS:
            entry[name] = int(cell)
        elif name in NULLABLE_INT_FIELDS:
            entry[name] = int(cell) if cell != "" else None
        elif name == "payload":
            entry[name] = json.loads(cell)
        else:
            entry[name] = cell
    return entry, cells["hash"]


# PostgreSQL -----------------------------------------------------------------------------------


# Strings that the code writes (not people): no control characters in them unless someone
# edited the row, so verification may escape them with replace(), which is several times
# cheaper than to_json() and differs from it only on control characters.
MACHINE_STRINGS = frozenset({"action", "chain", "outcome", "prev_hash", "trace_id"})


def pg_canonical_sql(
    table: str = "ledger_entry", *, with_hash: bool = False, exact: bool = True
) -> str:
    """A SQL expression that renders ``canonical(entry)`` (``with_hash``: a JSON Lines line)
    for a row of ``table``: string concatenation, ``to_json`` for strings, ``to_char`` for
    the time and ``payload::text`` for the payload. A NULL anywhere makes it NULL.

    ``exact=False`` (verification only) escapes strings with ``replace()`` rather than
    ``to_json()``: ``\\`` and ``"`` in ``MACHINE_STRINGS``, and line feed, carriage return
    and tab too in free text. The text is then not always valid JSON (another control
    character stays raw), but it is still an unambiguous rendering that equals Python's
    wherever no such character is, and a row it renders differently from Python simply
    fails the hash check and is re-checked in Python."""

    def column(name: str) -> str:
        ref = f'"{table}"."{name}"'
        if name == "payload":
            return f"{ref}::text"
        if name == "at":
            return f"""'"' || to_char({ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'"""
        if name in INT_FIELDS:
            return f"{ref}::text"
        if name in NULLABLE_INT_FIELDS:
            return f"coalesce({ref}::text, 'null')"
        if not exact and name in MACHINE_STRINGS:
            return f"""'"' || replace(replace({ref}, '\\', '\\\\'), '"', '\\"') || '"'"""
        if not exact:
            # Free text may hold line breaks and tabs: escaped as JSON does; any other
            # control character is left raw (and such a row is re-checked in Python).
            escaped = f"""replace(replace({ref}, '\\', '\\\\'), '"', '\\"')"""
            for raw, json_escape in (("\\n", "\\n"), ("\\r", "\\r"), ("\\t", "\\t")):
                escaped = f"replace({escaped}, E'{raw}', '{json_escape}')"
            return f"""'"' || {escaped} || '"'"""
        return f"to_json({ref})::text"

    names = list(FIELDS)
    if with_hash:
        names.insert(names.index("id"), "hash")
    pieces = []
    for i, name in enumerate(names):
        pieces.append(("'{" if i == 0 else "',") + f'"{name}":\'')
        pieces.append(column(name))
    pieces.append("'}'")
    return "(" + " || ".join(pieces) + ")"
