"""The alerts API: ``POST /api/v1/alerts/alertmanager`` (mounted in ``config/urls.py``).

Prometheus Alertmanager retries a 5xx and silently drops a 4xx, so the webhook is stored
before it is answered and matched afterwards, on a worker (``governance/alerts.py``). A
malformed payload gets a 400 naming each problem by its path and stores nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from governance import alerts
from rollbacks import access
from rollbacks.api import ERRORS, StrictJSONParser, auth
from rollbacks.storable import UnstorableJSON

router = Router(tags=["alerts"])


class StoredAlertOut(Schema):
    id: int = Field(description="The alert's id in Unwind.", examples=[12])
    fingerprint: str = Field(description="Alertmanager's fingerprint.", examples=["a1b2c3d4e5f6"])
    status: Literal["firing", "resolved"] = Field(
        description="The alert's status in this notification.", examples=["firing"]
    )
    starts_at: datetime = Field(description="startsAt, as sent.")
    duplicate: bool = Field(
        description="This occurrence (fingerprint, startsAt, status) was already stored: "
        "nothing new was stored or queued for it.",
        examples=[False],
    )
    rule: str | None = Field(
        description="The first active trigger rule whose label matchers match a firing alert "
        "(thresholds are checked when it is matched).",
        examples=["checkout-errors"],
    )


class AlertmanagerOut(Schema):
    stored: int = Field(description="Alerts stored by this request.", examples=[1])
    duplicates: int = Field(description="Alerts already stored before: ignored.", examples=[0])
    resolved: int = Field(description="Of the stored, how many were resolved.", examples=[0])
    queued: int = Field(
        description="New firing alerts queued for matching against the trigger rules.",
        examples=[1],
    )
    matched: int = Field(
        description="Of the queued, how many a trigger rule's matchers match.", examples=[1]
    )
    alerts: list[StoredAlertOut] = Field(
        description="Each alert of the payload, in its order, with what was done with it."
    )


# null reads as an empty mapping (webhook_parse), so the schema says it may be null.
_LABELS = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
WEBHOOK_SCHEMA = {
    "type": "object",
    "required": ["version", "groupKey", "alerts"],
    "properties": {
        "version": {"type": "string", "enum": ["4"]},
        "groupKey": {"type": "string", "minLength": 1},
        "truncatedAlerts": {"type": "integer"},
        "status": {"type": "string", "enum": ["firing", "resolved"]},
        "receiver": {"type": "string"},
        "groupLabels": _LABELS,
        "commonLabels": _LABELS,
        "commonAnnotations": _LABELS,
        "externalURL": {"type": "string"},
        "alerts": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["status", "labels", "startsAt", "fingerprint"],
                "properties": {
                    "status": {"type": "string", "enum": ["firing", "resolved"]},
                    "labels": _LABELS,
                    "annotations": _LABELS,
                    "startsAt": {"type": "string", "format": "date-time"},
                    # Alertmanager sends 0001-01-01T00:00:00Z while firing; "" means the same.
                    "endsAt": {  # "" and null mean absent, as the parser reads them
                        "anyOf": [
                            {"type": "string", "format": "date-time"},
                            {"type": "string", "maxLength": 0},
                            {"type": "null"},
                        ]
                    },
                    "generatorURL": {"type": "string"},
                    "fingerprint": {
                        "type": "string",
                        "maxLength": 100,
                        "pattern": r"^[^\u0000]*[^\u0000\s][^\u0000]*$",  # not blank
                    },
                },
            },
        },
    },
}


def _bad_body(message: str):
    return Status(400, {"detail": message, "errors": {"body": [message]}})


@router.post(
    "/alertmanager",
    auth=auth,
    response={200: AlertmanagerOut} | ERRORS,
    summary="Receive a Prometheus Alertmanager webhook (version 4)",
    description="Point an Alertmanager `webhook_configs` receiver here with "
    "`http_config.authorization.credentials` set to a service token of an operator (or "
    "admin) account. Every alert is stored before the answer, one row per occurrence "
    "(fingerprint + startsAt + status: repeats and HA pairs are stored once); new firing "
    "alerts are then matched against the trigger rules on a worker, and a matching rule "
    "plans a rollback of the run named by its `run_label` label, starting it only where "
    "the approval policies let an alert start it. A malformed payload gets a 400 naming "
    "each problem by its path (`alerts[2].startsAt`) and stores nothing. docs/alerts.md.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WEBHOOK_SCHEMA}},
        }
    },
)
def alertmanager_webhook(request: HttpRequest):
    user = request.auth
    if not access.has_role(user, *access.OPERATOR_ROLES):
        access.refuse(
            actor=user,
            action="alert.receive",
            subject=None,
            subject_type="alert",
            why="only an operator or admin account may send alerts",
        )
    try:
        data = StrictJSONParser().parse_body(request)
    except UnicodeDecodeError:
        return _bad_body("The body is not UTF-8 text: send JSON.")
    except json.JSONDecodeError as exc:
        return _bad_body(
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        )
    except RecursionError:
        return _bad_body("The body is not acceptable JSON: it is nested too deeply.")
    except UnstorableJSON as exc:
        return Status(400, {"detail": str(exc), "errors": {exc.field: [str(exc)]}})
    except ValueError as exc:
        return _bad_body(f"The body is not acceptable JSON: {exc}.")
    try:
        webhook = alerts.webhook_parse(data)
    except alerts.PayloadError as exc:
        errors: dict[str, list[str]] = {}
        for path, message in exc.errors:
            errors.setdefault(path, []).append(message)
        return Status(400, {"detail": str(exc), "errors": errors})
    stored = alerts.alerts_store(webhook=webhook, actor=user)
    new_firing = [s for s in stored if s.is_new and s.alert.status == alerts.FIRING]
    return {
        "stored": sum(s.is_new for s in stored),
        "duplicates": sum(not s.is_new for s in stored),
        "resolved": sum(s.is_new and s.alert.status == alerts.RESOLVED for s in stored),
        "queued": len({s.alert.pk for s in new_firing}),
        "matched": len({s.alert.pk for s in new_firing if s.rule}),
        "alerts": [
            {
                "id": s.alert.pk,
                "fingerprint": s.alert.fingerprint,
                "status": s.alert.status,
                "starts_at": s.alert.starts_at,
                "duplicate": not s.is_new,
                "rule": s.rule,
            }
            for s in stored
        ],
    }
