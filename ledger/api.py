"""The ledger's API: ``GET /api/v1/ledger/export`` (the router is added to the API in
``config/urls.py``, so that it is in ``/api/v1/openapi.json``).

The export is streamed (constant memory), ledgered, and described by a signed manifest at
the URL in its ``Link`` header once the stream has ended (docs/ledger.md). The query is
validated by the same form as the auditor's view (``ledger/filters.py``), so that a filter
means the same everywhere; its parameters are documented from that form's fields.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django import forms
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest
from django.utils import timezone
from django.utils.module_loading import import_string
from ninja import Field, Router, Schema, Status
from ninja.security import HttpBearer

from ledger import access
from ledger import filters as ledger_filters
from ledger.exports import CONTENT_TYPES, export_create, export_stream
from ledger.models import Export
from ledger.views import streaming_response

TOKEN_AUTHENTICATE = "rollbacks.tokens.token_authenticate"

router = Router(tags=["ledger"])


class ServiceToken(HttpBearer):
    """A service account's API token. Looked up by name so that the ledger imports no other
    app; a failure is answered by the API's 401 handler."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return import_string(TOKEN_AUTHENTICATE)(token)


class LedgerErrorOut(Schema):
    detail: str = Field(
        description="What went wrong, in one sentence.",
        examples=["Invalid filters: rollback: Enter a whole number."],
    )
    errors: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The query parameters at fault and what is wrong with each.",
        examples=[{"rollback": ["Enter a whole number."]}],
    )


# The query parameters, documented from the filter form's own fields -------------------------


def _parameter_schema(field: forms.Field) -> dict[str, Any]:
    if isinstance(field, forms.IntegerField):
        schema: dict[str, Any] = {"type": "integer"}
        if field.min_value is not None:
            schema["minimum"] = field.min_value
        return schema
    if isinstance(field, forms.DateTimeField):
        return {"type": "string", "format": "date-time"}
    if isinstance(field, forms.ChoiceField):
        return {"type": "string", "enum": [value for value, _ in field.choices if value]}
    schema = {"type": "string"}
    if isinstance(field, forms.RegexField):
        schema["pattern"] = field.regex.pattern
    if getattr(field, "max_length", None):
        schema["maxLength"] = field.max_length
    return schema


_DESCRIPTIONS = {
    "rollback": "Entries of this rollback (its id).",
    "chain": "Entries of this hash chain (`rollback:<id>` or `global`).",
    "system": "Entries about this system (slug).",
    "actor": "Entries whose actor contains this text (`user:alice`, `worker`, `service:…`).",
    "action": "Entries with this action or one below it (`step.attempt` matches "
    "`step.attempt.succeeded`).",
    "outcome": "Entries with this outcome.",
    "trace": "Entries with this W3C trace id (32 hexadecimal digits).",
    "from": "Entries at or after this time (ISO 8601; UTC unless it carries an offset).",
    "to": "Entries before this time (ISO 8601; UTC unless it carries an offset).",
}


def _parameters() -> list[dict[str, Any]]:
    form = ledger_filters.FilterForm()
    parameters = [
        {
            "in": "query",
            "name": "format",
            "required": False,
            "description": "`jsonl` (JSON Lines: one canonical entry with its hash a line) or "
            "`csv` (cells a spreadsheet would run as formulas are neutralised).",
            "schema": {"type": "string", "enum": list(Export.Format.values), "default": "jsonl"},
        }
    ]
    for name in ledger_filters.FILTER_NAMES:
        parameters.append(
            {
                "in": "query",
                "name": name,
                "required": False,
                "description": _DESCRIPTIONS[name],
                "schema": _parameter_schema(form.fields[name]),
            }
        )
    return parameters


QUERY_PARAMETERS = ("format", *ledger_filters.FILTER_NAMES)
_STREAM = {"type": "string", "description": "The export file, streamed."}
_OPENAPI = {
    "parameters": _parameters(),
    "responses": {
        "200": {
            "description": "The export, streamed. Its signed manifest (count, first and last "
            "hash, SHA-256 of the file, Ed25519 signature) is at the URL in the `Link` header "
            "once the stream has ended; verify both offline with `python -m "
            "ledger.verify_export FILE MANIFEST` (docs/ledger.md).",
            "headers": {
                "Link": {
                    "description": '`</ledger/exports/<id>/manifest.json>; rel="describedby"`: '
                    "the manifest (same token).",
                    "schema": {"type": "string"},
                },
                "Ledger-Export-Id": {
                    "description": "The export's id.",
                    "schema": {"type": "string", "format": "uuid"},
                },
                "Content-Disposition": {
                    "description": "attachment, with the file's name.",
                    "schema": {"type": "string"},
                },
            },
            "content": {
                CONTENT_TYPES[Export.Format.JSONL].split(";")[0]: {"schema": _STREAM},
                CONTENT_TYPES[Export.Format.CSV].split(";")[0]: {"schema": _STREAM},
            },
        }
    },
}


@router.get(
    "/export",
    auth=ServiceToken(),
    response={
        400: LedgerErrorOut,
        401: LedgerErrorOut,
        403: LedgerErrorOut,
        503: LedgerErrorOut,
    },
    summary="Export the ledger (streamed, with a signed manifest)",
    description="The entries matching the filters (as in the auditor's view), oldest first, "
    "as JSON Lines or CSV, streamed with constant memory. The export is itself ledgered "
    "(`ledger.exported`). Needs the auditor or admin role. A bad filter, or a query parameter "
    "that is not one of these, gets a 400 naming it and starts nothing; without a signing "
    "key, 503.",
    openapi_extra=_OPENAPI,
)
def export(request: HttpRequest):
    user = request.auth
    if not access.can_audit(user):
        raise PermissionDenied("Exporting the ledger needs the auditor or admin role.")
    with timezone.override(UTC):  # the ledger speaks UTC (ledger/filters.py)
        filters, errors = ledger_filters.parse(request.GET)
        fmt = request.GET.get("format", Export.Format.JSONL)
        if fmt not in Export.Format.values:
            errors = {**errors, "format": ["use jsonl or csv"]}
        # A misspelt filter (``rolback=8``) would otherwise export the whole ledger.
        known = ", ".join(QUERY_PARAMETERS)
        for name in sorted(set(request.GET) - set(QUERY_PARAMETERS)):
            errors = {**errors, name: [f"unknown query parameter: use {known}"]}
        if errors:
            named = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in errors.items())
            return Status(400, {"detail": f"Invalid filters: {named}", "errors": errors})
        try:
            export = export_create(actor=user, format=fmt, filters=filters)
        except ImproperlyConfigured as exc:
            return Status(503, {"detail": str(exc), "errors": {}})
    return streaming_response(request, export_stream(export), export)
