"""``POST /api/v1/events`` (mounted in ``config/urls.py``): other systems tell Unwind what
happened (deploys, alerts, notes, process-run events) for the rollback timeline."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import Field, Router, Schema, Status
from pydantic import field_validator

from rollbacks.api import ERRORS, TRACE_ID, TRACE_ID_EXAMPLE, TRACE_ID_HELP, ErrorOut, In, auth
from rollbacks.storable import time_problem
from timeline.events import IDEMPOTENCY_HEADER, IdempotencyKeyReused, event_record
from timeline.models import Event

router = Router(tags=["events"])

KINDS = Literal[tuple(Event.Kind.values)]  # type: ignore[valid-type]


class EventIn(In):
    kind: KINDS = Field(
        description="deploy, alert, note, process_run, config_change, incident or other.",
        examples=["deploy"],
    )
    source: str = Field(
        min_length=1,
        max_length=100,
        description="Who sends it (a CI pipeline, a pager, the process itself).",
        examples=["ci"],
    )
    title: str = Field(
        min_length=1,
        max_length=200,
        description="One line: what happened.",
        examples=["orders-api 2.4.1 deployed"],
    )
    system: str | None = Field(
        None,
        max_length=50,
        description="The slug of the system it concerns, if one; an unknown slug is a 400.",
        examples=["orders-api"],
    )
    occurred_at: datetime | None = Field(
        None,
        description="When it happened, with a time zone (an offset within ±15:59); defaults to "
        "when it is received.",
        examples=["2024-05-01T12:00:00Z"],
    )
    trace_id: str = Field(
        "", pattern=TRACE_ID, description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE]
    )
    run: int | None = Field(None, description="The process run it belongs to.", examples=[7])
    rollback: int | None = Field(
        None, description="The rollback it belongs to (its run is implied).", examples=[5]
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="Anything else, as a JSON object (shown on the timeline as sent).",
        examples=[{"version": "2.4.1"}],
    )

    @field_validator("occurred_at")
    @classmethod
    def _storable_time(cls, value: datetime | None) -> datetime | None:
        if problem := time_problem(value):
            raise ValueError(problem)
        return value


class EventOut(Schema):
    id: int = Field(description="The event's id.", examples=[41])
    kind: str = Field(description="As sent.", examples=["deploy"])
    source: str = Field(description="As sent.", examples=["ci"])
    title: str = Field(description="As sent.", examples=["orders-api 2.4.1 deployed"])
    system: str | None = Field(description="The system's slug, if one.", examples=["orders-api"])
    occurred_at: datetime = Field(description="When it happened.")
    received_at: datetime = Field(description="When Unwind stored it: its place on timelines.")
    trace_id: str = Field(description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE])
    run: int | None = Field(description="The run it belongs to.", examples=[7])
    rollback: int | None = Field(description="The rollback it belongs to.", examples=[5])


KEY_HELP = (
    "Optional. Makes a retried POST safe: the same key with the same fields answers 200 with "
    "the event stored the first time; with other fields, 409 naming the key. A Structured "
    'Fields string as the IETF httpapi draft says (`Idempotency-Key: "8e03978e-40d5"`); the '
    "bare key is accepted too. At most 200 printable ASCII characters; keys are per account."
)
# An sf-string (RFC 8941 §3.3.3): printable ASCII in quotes, with \" and \\ escaped.
SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
BARE_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def idempotency_key(request: HttpRequest) -> str:
    """The Idempotency-Key header's key ('' when none was sent), quoted or not; a
    ValidationError naming the header when it is not a key."""
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return ""
    raw = raw.strip()
    quoted = SF_STRING.fullmatch(raw)
    if quoted:
        key = re.sub(r'\\(["\\])', r"\1", quoted[1])
    elif not raw.startswith('"') and BARE_KEY.fullmatch(raw):
        key = raw
    else:
        key = ""
    if not key or len(key) > 200:
        raise ValidationError(
            {
                IDEMPOTENCY_HEADER: [
                    "send 1 to 200 printable ASCII characters, quoted as a string "
                    '(Idempotency-Key: "…") or bare'
                ]
            }
        )
    return key


@router.post(
    "",
    auth=auth,
    response={201: EventOut, 200: EventOut, 409: ErrorOut} | ERRORS,
    summary="Post an external event for the timelines",
    description="A deploy, alert, note or process-run event from another system. It shows on "
    "the timeline of every rollback it is joined to: by `rollback`, by `run` (every rollback "
    "of the run), or by `trace_id` (the rollback's or its run's). Needs the operator or admin "
    "role; `system`, `run` and `rollback` must be ones the account can see (else a 400 "
    "naming the field). Not ledgered: an event is an observation, not an action "
    "(docs/timeline.md). Each POST stores one event, unless it sends an `Idempotency-Key`: "
    "then a retry answers 200 with the event stored the first time.",
    openapi_extra={
        "parameters": [
            {
                "in": "header",
                "name": IDEMPOTENCY_HEADER,
                "required": False,
                "schema": {"type": "string", "maxLength": 202},
                "description": KEY_HELP,
                "example": '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
            }
        ]
    },
)
def event_create(request: HttpRequest, payload: EventIn):
    key = idempotency_key(request)
    try:
        event, created = event_record(actor=request.auth, idempotency_key=key, **payload.dict())
    except IdempotencyKeyReused as exc:
        return Status(409, {"detail": str(exc), "errors": {IDEMPOTENCY_HEADER: [str(exc)]}})
    return Status(
        201 if created else 200,
        {
            "id": event.pk,
            "kind": event.kind,
            "source": event.source,
            "title": event.title,
            "system": event.system.slug if event.system else None,
            "occurred_at": event.occurred_at,
            "received_at": event.received_at,
            "trace_id": event.trace_id,
            "run": event.run_id,
            "rollback": event.rollback_id,
        },
    )
