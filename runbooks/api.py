"""``POST /api/v1/runbooks/{slug}/instantiate`` (mounted in ``config/urls.py``): the same
checks as the browser form, through the same service; errors name the field
(``params.<name>``, ``reason``, ``steps[0].action_type``)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Field, Path, Router, Status

from rollbacks.api import ERRORS, REASON_MAX_CHARS, In, RollbackOut, auth, rollback_out
from runbooks import services

router = Router(tags=["runbooks"])


class InstantiateIn(In):
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The runbook's parameters by name; a left-out one takes its default.",
        examples=[{"flag": "new-checkout", "invoice_id": "inv-5521"}],
    )
    reason: str = Field(
        min_length=1,
        max_length=REASON_MAX_CHARS,
        description="Why the runbook is used; recorded in the ledger.",
        examples=["checkout broke after the flag flip; no run log"],
    )
    drill: bool = Field(
        False,
        description="A drill: a rehearsal, marked as such everywhere.",
        examples=[False],
    )


@router.post(
    "/{slug}/instantiate",
    auth=auth,
    response={201: RollbackOut} | ERRORS,
    summary="Instantiate a runbook",
    description="Plans a rollback from the runbook's newest version with these parameters "
    "(a synthetic process run runbook:<slug>) and submits it to the approval policies: "
    "answers the plan and whether it awaits approval. Needs the operator role in the teams "
    "owning every system of the runbook; 404 when you cannot see them all.",
)
def runbook_instantiate(
    request: HttpRequest,
    payload: InstantiateIn,
    slug: str = Path(..., description="The runbook's slug.", examples=["checkout-off"]),
):
    user = request.auth
    version = services.get_version_for_user(user, slug)
    rollback = services.runbook_instantiate(
        version=version,
        actor=user,
        values=payload.params,
        reason=payload.reason,
        is_drill=payload.drill,
    )
    return Status(201, rollback_out(rollback.pk, detail=False))
