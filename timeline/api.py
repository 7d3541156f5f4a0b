"""``POST /api/v1/events`` (mounted in ``config/urls.py``): other systems tell Unwind what
happened (deploys, alerts, notes, process-run events) for the rollback timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from rollbacks.api import ERRORS, TRACE_ID, TRACE_ID_EXAMPLE, TRACE_ID_HELP, In, auth
from timeline.events import event_record
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
        description="When it happened, with a time zone; defaults to when it is received.",
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


@router.post(
    "",
    auth=auth,
    response={201: EventOut} | ERRORS,
    summary="Post an external event for the timelines",
    description="A deploy, alert, note or process-run event from another system. It shows on "
    "the timeline of every rollback it is joined to: by `rollback`, by `run` (every rollback "
    "of the run), or by `trace_id` (the rollback's or its run's). Needs the operator or admin "
    "role; `system`, `run` and `rollback` must be ones the account can see (else a 400 "
    "naming the field). Not ledgered: an event is an observation, not an action "
    "(docs/timeline.md). Each POST stores one event: a retry stores it again.",
)
def event_create(request: HttpRequest, payload: EventIn):
    event = event_record(actor=request.auth, **payload.dict())
    return Status(
        201,
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
