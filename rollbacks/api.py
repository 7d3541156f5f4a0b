"""The JSON API (v1) for automated processes and alerting systems: SPEC section 4.

Every endpoint takes ``Authorization: Bearer <token>`` (``rollbacks/tokens.py``) and acts
as the token's user, with its role and teams. Objects are fetched through ``access.py``
(404 for what the user may not see); writes go through the services, which are idempotent.
Every error answers ``{"detail": "…", "errors": {"<field>": ["…"]}}``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import Count, Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import ConfigDict

from rollbacks import access
from rollbacks.engine import rollback_plan
from rollbacks.models import Attempt, ForwardAction, ProcessRun, Rollback, Stage, Step
from rollbacks.runs import action_report, run_fail, run_register
from rollbacks.storable import UnstorableJSON, refuse_unstorable
from rollbacks.tokens import token_authenticate


class StrictJSONParser(Parser):
    """JSON that PostgreSQL can store: no NaN or Infinity (nor a number such as ``1e400`` that
    overflows to infinity), no NUL character and no lone UTF-16 surrogate in any string or key.

    Each would pass validation and then fail at INSERT with a 500; refused here with a 400
    naming the field (``UnstorableJSON``).
    """

    def parse_body(self, request: HttpRequest) -> Any:
        data = json.loads(request.body, parse_constant=_refuse_constant)
        refuse_unstorable(data)
        return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# What the parser refuses (rollbacks/storable.py), said in the schema: request strings and
# keys hold no NUL; JSON objects of any shape (params, before, payload) are StorableJSON; a
# date-time's offset is within ±15:59. Lone UTF-16 surrogates are refused too, but JSON
# Schema's regular expressions (ECMA 262, Rust's regex in validators) cannot name them: the
# descriptions say so.
STORABLE_TEXT = "^[^\\u0000]*$"
STORABLE_TEXT_HELP = "Text without a NUL character or a lone UTF-16 surrogate."
STORABLE_DATE_TIME = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?"
    "([Zz]|[+-](0[0-9]|1[0-5]):?[0-5][0-9])$"
)
STORABLE_JSON = {
    "description": "Any JSON value PostgreSQL can store: no NUL character or lone UTF-16 "
    "surrogate in a string or key, no number that overflows to infinity.",
    "anyOf": [
        {"type": "string", "pattern": STORABLE_TEXT},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": "#/components/schemas/StorableJSON"}},
        {
            "type": "object",
            "propertyNames": {"pattern": STORABLE_TEXT},
            "additionalProperties": {"$ref": "#/components/schemas/StorableJSON"},
        },
    ],
}


def _storable_request(node: Any, components: dict, seen: set[str]) -> None:
    """Say in a request schema what the parser refuses (above), in place."""
    if isinstance(node, list):
        for item in node:
            _storable_request(item, components, seen)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name not in seen and name in components:
            seen.add(name)
            _storable_request(components[name], components, seen)
        return
    if node.get("type") == "string" and not {"enum", "const", "pattern"} & set(node):
        if node.get("format") == "date-time":
            node["pattern"] = STORABLE_DATE_TIME
        elif "format" not in node:
            node["pattern"] = STORABLE_TEXT
            node.setdefault("description", STORABLE_TEXT_HELP)
    if node.get("type") == "object":
        if node.get("additionalProperties") is True or (
            "additionalProperties" not in node and "properties" not in node
        ):
            node["additionalProperties"] = {"$ref": "#/components/schemas/StorableJSON"}
        node.setdefault("propertyNames", {"pattern": STORABLE_TEXT})
    for key, child in node.items():
        if key not in ("examples", "example", "default", "enum", "const", "propertyNames"):
            _storable_request(child, components, seen)


class UnwindAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["StorableJSON"] = STORABLE_JSON
        seen: set[str] = set()
        for operation in (op for item in schema["paths"].values() for op in item.values()):
            for parameter in operation.get("parameters", []):
                _storable_request(parameter.get("schema"), components, seen)
            _storable_request(operation.get("requestBody"), components, seen)
        return schema


api = UnwindAPI(
    title="Unwind API",
    version="1",
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url=None,
    parser=StrictJSONParser(),
)

TRACE_ID = r"^([0-9a-f]{32})?$"
# Reasons, comments and notes people write: as long as the page's form allows (rollbacks/forms.py).
REASON_MAX_CHARS = 2000
# A process's own account of why it failed may carry an error message or a short trace.
FAILURE_REASON_MAX_CHARS = 10_000
TRACE_ID_HELP = "W3C trace id (32 lowercase hex digits) correlating this with its traces."
TRACE_ID_EXAMPLE = "4bf92f3577b34da6a3ce929d0e0e4736"


# Authentication ------------------------------------------------------------------------------


class ServiceToken(HttpBearer):
    """A service account's API token, created with ``manage.py create_service_token``."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return token_authenticate(token)


auth = ServiceToken()


# Errors --------------------------------------------------------------------------------------


class ErrorOut(Schema):
    detail: str = Field(
        description="What went wrong, in one sentence.",
        examples=["params: Input should be a valid dictionary"],
    )
    errors: dict[str, list[str]] = Field(
        description='The fields at fault and what is wrong with each ("__all__": the request '
        "as a whole); empty when no field is.",
        examples=[{"params": ["Input should be a valid dictionary"]}],
    )


ERRORS: dict[int, Any] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    413: ErrorOut,
}


def _error(
    request: HttpRequest, status: int, detail: str, errors: dict[str, list[str]] | None = None
) -> HttpResponse:
    return api.create_response(request, {"detail": detail, "errors": errors or {}}, status=status)


def _summary(errors: dict[str, list[str]]) -> str:
    return "; ".join(
        (msg if field == NON_FIELD_ERRORS else f"{field}: {msg}")
        for field, messages in errors.items()
        for msg in messages
    )


def _field_of(loc: tuple | list) -> str:
    """('body', 'payload', 'params', 'x') -> 'params.x'; ('path', 'id') -> 'id'."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[2:]  # the source, then the view's parameter name
    elif parts and parts[0] in ("path", "query", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


@api.exception_handler(NinjaValidationError)
def _invalid_input(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        field = _field_of(error.get("loc", ()))
        message = error.get("msg", "invalid")
        if field == "body" and error.get("type") == "missing":
            message = "The body is empty: send a JSON object."
        elif field == "body":
            message = "The body must be a JSON object."
        elif error.get("type") == "missing":
            message = "This field is required."
        elif error.get("type") == "extra_forbidden":
            message = "Unknown field."
        errors.setdefault(field, []).append(message)
    return _error(request, 400, _summary(errors), errors)


@api.exception_handler(ValidationError)
def _refused_by_service(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    return _error(request, 400, _summary(errors), errors)


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return _error(request, 403, str(exc) or "You may not do this.")


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, 404, str(exc) or "Not found.")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    if request.headers.get("Authorization"):
        detail = "The bearer token is invalid, revoked, or its account is inactive."
        challenge = 'Bearer error="invalid_token"'
    else:
        detail = "Send an API token: Authorization: Bearer <token>."
        challenge = "Bearer"
    response = _error(request, 401, detail, {"Authorization": [detail]})
    response["WWW-Authenticate"] = challenge
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:  # ninja could not parse the body
        if isinstance(cause, UnicodeDecodeError):
            message = "The body is not UTF-8 text: send JSON."
        elif isinstance(cause, json.JSONDecodeError):
            message = f"The body is not valid JSON: {cause.msg} at line {cause.lineno} column {cause.colno}."
        elif isinstance(cause, RecursionError):
            message = "The body is not acceptable JSON: it is nested too deeply."
        elif isinstance(cause, UnstorableJSON):
            return _error(request, 400, str(cause), {cause.field: [str(cause)]})
        else:
            message = f"The body is not acceptable JSON: {cause}."
        return _error(request, 400, message, {"body": [message]})
    return _error(request, exc.status_code, str(exc))


# Schemas -------------------------------------------------------------------------------------


class In(Schema):
    """Request bodies: an unknown field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RunIn(In):
    process: str = Field(
        min_length=1,
        max_length=100,
        description="The name of the automated process.",
        examples=["orders-migration"],
    )
    external_id: str = Field(
        min_length=1,
        max_length=200,
        description="The process's own id for this run; (process, external_id) is unique, so "
        "registering the same run again answers with the first registration.",
        examples=["2024-05-01T12:00:00Z#42"],
    )
    trace_id: str = Field(
        "", pattern=TRACE_ID, description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE]
    )


class RunOut(Schema):
    id: int = Field(description="The run's id in Unwind: use it in the URLs below.", examples=[7])
    process: str = Field(
        description="The name of the automated process.", examples=["orders-migration"]
    )
    external_id: str = Field(
        description="The process's own id for this run.", examples=["2024-05-01T12:00:00Z#42"]
    )
    trace_id: str = Field(description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE])
    status: Literal["running", "failed", "succeeded"] = Field(
        description="running until a failure is reported.", examples=["running"]
    )
    failure_reason: str = Field(
        description="Why it failed, as reported; empty while running.", examples=[""]
    )
    created_at: datetime = Field(description="When it was registered.")
    failed_at: datetime | None = Field(description="When its failure was reported, if it was.")
    actions_reported: int = Field(
        description="How many forward actions it has reported.", examples=[3]
    )


class RunRollbackOut(Schema):
    id: int = Field(description="The rollback's id.", examples=[5])
    state: str = Field(description="Its state.", examples=["awaiting_approval"])
    is_drill: bool = Field(description="A drill (rehearsal), not the real unwind.")


class RunListItemOut(RunOut):
    rollback: RunRollbackOut | None = Field(
        description="The run's newest rollback (drills included), or null when none was planned."
    )


class ActionIn(In):
    system: str = Field(
        min_length=1,
        max_length=50,
        description="The slug of the system the action touched.",
        examples=["orders-db"],
    )
    action_type: str = Field(
        min_length=1,
        max_length=100,
        description="The forward action type, as named in the system's contract.",
        examples=["create_order"],
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The action's parameters (a JSON object): the contract's compensation "
        "templates read them as {params.<name>}.",
        examples=[{"order_id": "o-1001", "amount": 4200}],
    )
    before: dict[str, Any] | None = Field(
        None,
        description="The before-image (a JSON object), where relevant: {before.<name>}.",
        examples=[{"status": "pending"}],
    )
    after: dict[str, Any] | None = Field(
        None,
        description="The after-image (a JSON object), where relevant: {after.<name>}.",
        examples=[{"status": "paid"}],
    )
    idempotency_key: str = Field(
        min_length=1,
        max_length=200,
        description="The process's own key for this action: reporting the same key again "
        "records nothing new and answers with the first report.",
        examples=["orders-migration/42/create_order/o-1001"],
    )
    status: Literal["completed", "failed"] = Field(
        "completed",
        description="completed: it took effect (it will be undone); failed: it had no effect "
        "(nothing to undo).",
        examples=["completed"],
    )
    trace_id: str = Field(
        "",
        pattern=TRACE_ID,
        description=TRACE_ID_HELP + " Defaults to the run's.",
        examples=[TRACE_ID_EXAMPLE],
    )


class ActionOut(Schema):
    id: int = Field(description="The forward action's id.", examples=[31])
    run: int = Field(description="The run's id.", examples=[7])
    sequence: int = Field(
        description="Its position in the run, from 1, in reporting order.", examples=[1]
    )
    system: str = Field(description="The slug of the system it touched.", examples=["orders-db"])
    action_type: str = Field(description="The forward action type.", examples=["create_order"])
    status: Literal["completed", "failed"] = Field(
        description="Whether it took effect.", examples=["completed"]
    )
    params: dict[str, Any] = Field(description="Its parameters.", examples=[{"order_id": "o-1001"}])
    before: dict[str, Any] | None = Field(description="The before-image, if reported.")
    after: dict[str, Any] | None = Field(description="The after-image, if reported.")
    idempotency_key: str = Field(
        description="The key it was reported with.",
        examples=["orders-migration/42/create_order/o-1001"],
    )
    trace_id: str = Field(description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE])
    reported_at: datetime = Field(description="When it was first reported.")


class FailureIn(In):
    reason: str = Field(
        min_length=1,
        max_length=FAILURE_REASON_MAX_CHARS,
        description="Why the run failed.",
        examples=["payment provider timed out after 3 of 5 batches"],
    )


class FaultIn(In):
    action: int = Field(
        description="The id of the forward action whose step the fault hits.", examples=[31]
    )
    kind: Literal["fail", "slow", "kill"] = Field(
        description="fail: the attempt fails; slow: it is held up `seconds`; kill: the worker "
        "process running it is killed (SIGKILL) and the sweeper hands the step on.",
        examples=["fail"],
    )
    times: int = Field(1, ge=1, le=10, description="How many attempts it hits.", examples=[2])
    permanent: bool = Field(
        False, description="fail: a permanent error (the step waits for a human).", examples=[False]
    )
    seconds: float = Field(0, ge=0, le=300, description="slow: seconds per hit.", examples=[0])


class RollbackIn(In):
    run: int = Field(description="The id of the process run to roll back.", examples=[7])
    reason: str = Field(
        min_length=1,
        max_length=REASON_MAX_CHARS,
        description="Why it is being rolled back; recorded in the ledger.",
        examples=["orders-migration failed half-way: undo it"],
    )
    drill: bool = Field(
        False,
        description="A drill: a rehearsal against rehearsal targets, marked as such everywhere.",
        examples=[False],
    )
    faults: list[FaultIn] = Field(
        default_factory=list,
        description="A drill's injected faults (docs/drills.md); refused (400 naming `faults`) "
        "unless `drill` is true.",
        examples=[[{"action": 31, "kind": "fail", "times": 2}]],
    )


class AttemptOut(Schema):
    number: int = Field(description="1 for the first attempt.", examples=[1])
    outcome: Literal["running", "succeeded", "transient", "permanent", "lost", "refused"] = Field(
        description="running; succeeded; transient or permanent error; lost (its lease "
        "expired); refused (its answer came with a stale fencing token).",
        examples=["succeeded"],
    )
    error: str = Field(description="The error, if it failed.", examples=[""])
    started_at: datetime = Field(description="When it started.")
    finished_at: datetime | None = Field(description="When it finished, if it has.")
    output: dict[str, Any] = Field(
        description="What the executor reported (e.g. the HTTP status).", examples=[{"status": 200}]
    )


class StepOut(Schema):
    id: int = Field(description="The step's id.", examples=[12])
    system: str = Field(
        description="The slug of the system it compensates on.", examples=["orders-db"]
    )
    action_type: str = Field(description="The forward action it undoes.", examples=["create_order"])
    forward_action: int = Field(description="The id of that forward action.", examples=[31])
    kind: str = Field(
        description="The compensation kind: http, sql, sql_restore, flag, manual, simulated.",
        examples=["http"],
    )
    is_manual: bool = Field(description="A human must do it (and confirm it).", examples=[False])
    manual_reason: str = Field(description="Why it is manual, if it is.", examples=[""])
    spec: dict[str, Any] = Field(
        description="The compensation, rendered from the contract's templates.",
        examples=[{"kind": "http", "method": "POST", "url": "http://orders/o-1001/cancel"}],
    )
    state: str = Field(
        description="pending, running, retry_wait, waiting_human, failed, succeeded, skipped, cancelled.",
        examples=["pending"],
    )
    idempotency_key: str = Field(
        description="Handed to the target with every attempt, so the undo happens once.",
        examples=["unwind-undo-31"],
    )


class StepDetailOut(StepOut):
    attempt_count: int = Field(description="How many attempts were made.", examples=[1])
    max_attempts: int = Field(description="At most this many automatic attempts.", examples=[3])
    last_error: str = Field(description="The last attempt's error, if any.", examples=[""])
    human_note: str = Field(
        description="A skip's justification or a manual step's note.", examples=[""]
    )
    finished_at: datetime | None = Field(description="When it finished, if it has.")
    attempts: list[AttemptOut] = Field(description="Its attempts, oldest first.")


class StageOut(Schema):
    index: int = Field(
        description="1 is unwound first; stage k+1 starts when k is done.", examples=[1]
    )
    state: str = Field(
        description="pending, running, halted, succeeded, cancelled.", examples=["pending"]
    )
    steps: list[StepOut] = Field(description="Its steps; they may run in parallel.")


class StageDetailOut(Schema):
    index: int = Field(
        description="1 is unwound first; stage k+1 starts when k is done.", examples=[1]
    )
    state: str = Field(
        description="pending, running, halted, succeeded, cancelled.", examples=["running"]
    )
    started_at: datetime | None = Field(description="When it started, if it has.")
    finished_at: datetime | None = Field(description="When it finished, if it has.")
    steps: list[StepDetailOut] = Field(description="Its steps with their attempts.")


class RollbackOut(Schema):
    id: int = Field(description="The rollback's id.", examples=[5])
    run: int = Field(description="The id of the run it unwinds.", examples=[7])
    state: str = Field(
        description="draft, awaiting_approval, approved, running, paused, succeeded, failed, "
        "partially_rolled_back, aborted.",
        examples=["awaiting_approval"],
    )
    awaits_approval: bool = Field(
        description="It waits for approvals before it may start.", examples=[True]
    )
    is_drill: bool = Field(description="A drill (rehearsal).", examples=[False])
    reason: str = Field(
        description="Why it was requested.", examples=["orders-migration failed half-way"]
    )
    requested_by: str | None = Field(
        description="Who requested it (username).", examples=["ci-orders"]
    )
    dependency_map: int | None = Field(
        description="The version of the dependency map it was planned from (pinned); null "
        "when none was published.",
        examples=[3],
    )
    trace_id: str = Field(description=TRACE_ID_HELP, examples=[TRACE_ID_EXAMPLE])
    created_at: datetime = Field(description="When it was planned.")
    stages: list[StageOut] = Field(description="The plan: stages in the order they run.")


class RollbackDetailOut(RollbackOut):
    outcome_summary: str = Field(
        description="What was undone and what was not, once it has finished.",
        examples=["Undone: 3 of 3 steps."],
    )
    started_at: datetime | None = Field(description="When it started, if it has.")
    finished_at: datetime | None = Field(description="When it finished, if it has.")
    stages: list[StageDetailOut] = Field(description="Stages in order, with steps and attempts.")  # type: ignore[assignment]


# Serialisation -------------------------------------------------------------------------------


def _run_out(run: ProcessRun, *, actions_reported: int | None = None) -> dict:
    return {
        "id": run.pk,
        "process": run.process,
        "external_id": run.external_id,
        "trace_id": run.trace_id,
        "status": run.status,
        "failure_reason": run.failure_reason,
        "created_at": run.created_at,
        "failed_at": run.failed_at,
        "actions_reported": run.actions.count() if actions_reported is None else actions_reported,
    }


def _action_out(action: ForwardAction) -> dict:
    return {
        "id": action.pk,
        "run": action.run_id,
        "sequence": action.sequence,
        "system": action.system.slug,
        "action_type": action.action_type,
        "status": action.status,
        "params": action.params,
        "before": action.before,
        "after": action.after,
        "idempotency_key": action.idempotency_key,
        "trace_id": action.trace_id,
        "reported_at": action.reported_at,
    }


def _step_out(step: Step, *, detail: bool) -> dict:
    out = {
        "id": step.pk,
        "system": step.system.slug,
        "action_type": step.forward_action.action_type,
        "forward_action": step.forward_action_id,
        "kind": step.kind,
        "is_manual": step.is_manual,
        "manual_reason": step.manual_reason,
        "spec": step.spec,
        "state": step.state,
        "idempotency_key": step.idempotency_key,
    }
    if detail:
        out |= {
            "attempt_count": step.attempts,
            "max_attempts": step.max_attempts,
            "last_error": step.last_error,
            "human_note": step.human_note,
            "finished_at": step.finished_at,
            "attempts": [
                {
                    "number": a.number,
                    "outcome": a.outcome,
                    "error": a.error,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "output": a.output,
                }
                for a in step.attempt_set.all()
            ],
        }
    return out


def rollback_out(pk: int, *, detail: bool) -> dict:
    """The rollback with its plan, in a constant number of queries."""
    steps = Step.objects.select_related("system", "forward_action").order_by("id")
    if detail:
        steps = steps.prefetch_related(
            Prefetch("attempt_set", queryset=Attempt.objects.order_by("number"))
        )
    rollback = (
        Rollback.objects.select_related("dependency_map", "requested_by")
        .prefetch_related(
            Prefetch(
                "stages",
                queryset=Stage.objects.order_by("index").prefetch_related(
                    Prefetch("steps", queryset=steps)
                ),
            )
        )
        .get(pk=pk)
    )
    stages = []
    for stage in rollback.stages.all():
        s: dict[str, Any] = {
            "index": stage.index,
            "state": stage.state,
            "steps": [_step_out(step, detail=detail) for step in stage.steps.all()],
        }
        if detail:
            s |= {"started_at": stage.started_at, "finished_at": stage.finished_at}
        stages.append(s)
    out = {
        "id": rollback.pk,
        "run": rollback.run_id,
        "state": rollback.state,
        "awaits_approval": rollback.state == Rollback.State.AWAITING_APPROVAL,
        "is_drill": rollback.is_drill,
        "reason": rollback.reason,
        "requested_by": rollback.requested_by.get_username() if rollback.requested_by else None,
        "dependency_map": rollback.dependency_map.version if rollback.dependency_map else None,
        "trace_id": rollback.trace_id,
        "created_at": rollback.created_at,
        "stages": stages,
    }
    if detail:
        out |= {
            "outcome_summary": rollback.outcome_summary,
            "started_at": rollback.started_at,
            "finished_at": rollback.finished_at,
        }
    return out


# Endpoints -----------------------------------------------------------------------------------

RUN_ID = Path(..., description="The run's id, as POST /runs answered it.", examples=[7])
ROLLBACK_ID = Path(
    ..., description="The rollback's id, as POST /rollbacks answered it.", examples=[5]
)


def _require_reporter(user: Any, subject: Any, action: str) -> None:
    """Reports change state, so auditors (and users without a role) may not send them."""
    if not access.has_role(user, *access.OPERATOR_ROLES):
        access.refuse(
            actor=user,
            action=action,
            subject=subject,
            why="only an operator or admin account may report process runs",
        )


@api.post(
    "/runs",
    auth=auth,
    response={201: RunOut, 200: RunOut} | ERRORS | {409: ErrorOut},
    summary="Register a process run",
    description="201 with the new run; 200 with the same body when this (process, "
    "external_id) was already registered by this account. Needs the operator or admin role.",
    tags=["runs"],
)
def run_create(request: HttpRequest, payload: RunIn):
    user = request.auth
    _require_reporter(user, None, "run.register")
    run, created = run_register(
        process=payload.process,
        external_id=payload.external_id,
        trace_id=payload.trace_id,
        actor=user,
    )
    if not created and not ProcessRun.objects.visible_to(user).filter(pk=run.pk).exists():
        message = "another account already registered a run with this process and external id"
        return Status(409, {"detail": message, "errors": {"external_id": [message]}})
    return Status(201 if created else 200, _run_out(run))


RUN_STATUS = Literal["running", "failed", "succeeded"]


@api.get(
    "/runs",
    auth=auth,
    response={200: list[RunListItemOut]} | ERRORS,
    summary="List process runs",
    description="The runs the account can see, newest first, each with its newest rollback. "
    "`status` keeps one status (`failed`: the runs that may need an unwind); `limit` caps "
    "the list (1 to 200, default 50). In a constant number of queries.",
    tags=["runs"],
)
def run_list(
    request: HttpRequest, status: RUN_STATUS | None = None, limit: int = Query(50, ge=1, le=200)
):
    runs = ProcessRun.objects.visible_to(request.auth).annotate(action_count=Count("actions"))
    if status:
        runs = runs.filter(status=status)
    runs = runs.order_by("-created_at", "-id").prefetch_related(
        Prefetch("rollbacks", queryset=Rollback.objects.order_by("-id"), to_attr="newest_first")
    )[:limit]
    out = []
    for run in runs:
        newest = run.newest_first[0] if run.newest_first else None
        item = _run_out(run, actions_reported=run.action_count)
        item["rollback"] = (
            {"id": newest.pk, "state": newest.state, "is_drill": newest.is_drill}
            if newest
            else None
        )
        out.append(item)
    return out


@api.post(
    "/runs/{id}/actions",
    auth=auth,
    response={201: ActionOut, 200: ActionOut} | ERRORS | {409: ErrorOut},
    summary="Report a forward action",
    description="201 when recorded; 200 with the first report's body when this "
    "idempotency_key was already reported for the run; 409 when the key was reported "
    "for a different action.",
    tags=["runs"],
)
def run_action_create(request: HttpRequest, payload: ActionIn, id: int = RUN_ID):
    user = request.auth
    run = access.get_run_for_user(user, id)
    _require_reporter(user, run, "run.action_report")
    action, created = action_report(
        run=run,
        system_slug=payload.system,
        action_type=payload.action_type,
        idempotency_key=payload.idempotency_key,
        params=payload.params,
        before=payload.before,
        after=payload.after,
        status=payload.status,
        trace_id=payload.trace_id,
        actor=user,
    )
    if not created:
        reported = {"system": action.system.slug, "action_type": action.action_type}
        reported |= {"params": action.params, "before": action.before, "after": action.after}
        reported |= {"status": action.status}
        differ = sorted(k for k, v in reported.items() if getattr(payload, k) != v)
        if differ:
            message = (
                f"this idempotency_key was already reported with different {', '.join(differ)}"
            )
            return Status(409, {"detail": message, "errors": {"idempotency_key": [message]}})
    return Status(201 if created else 200, _action_out(action))


@api.post(
    "/runs/{id}/failure",
    auth=auth,
    response={200: RunOut} | ERRORS,
    summary="Report that a run failed",
    description="Reporting it again changes nothing and answers the same.",
    tags=["runs"],
)
def run_failure_create(request: HttpRequest, payload: FailureIn, id: int = RUN_ID):
    user = request.auth
    run = access.get_run_for_user(user, id)
    _require_reporter(user, run, "run.fail")
    return _run_out(run_fail(run=run, reason=payload.reason, actor=user))


@api.post(
    "/rollbacks",
    auth=auth,
    response={201: RollbackOut} | ERRORS,
    summary="Request a rollback of a run",
    description="Plans the unwind and submits it to the approval policies: answers the plan "
    "(stages and steps) and whether it awaits approval. Needs the operator role in a team "
    "whose systems the run touched.",
    tags=["rollbacks"],
)
def rollback_create(request: HttpRequest, payload: RollbackIn):
    user = request.auth
    try:
        run = access.get_run_for_user(user, payload.run)
    except Http404 as exc:
        return Status(404, {"detail": str(exc), "errors": {"run": [str(exc)]}})
    rollback = rollback_plan(
        run=run,
        actor=user,
        reason=payload.reason,
        is_drill=payload.drill,
        trigger="api",
        faults=[f.model_dump() for f in payload.faults],
        require_failure=True,
    )
    return Status(201, rollback_out(rollback.pk, detail=False))


@api.get(
    "/rollbacks/{id}",
    auth=auth,
    response={200: RollbackDetailOut} | ERRORS,
    summary="A rollback's state",
    description="Its state, stages and steps, with every attempt and its outcome.",
    tags=["rollbacks"],
)
def rollback_detail(request: HttpRequest, id: int = ROLLBACK_ID):
    rollback = access.get_rollback_for_user(request.auth, id)
    return rollback_out(rollback.pk, detail=True)


# Operator actions ----------------------------------------------------------------------------


class ActionReasonIn(In):
    reason: str = Field(
        "",
        max_length=REASON_MAX_CHARS,
        description="Why: required for abort and skip (and accepted as the note that resolves "
        "a manual step).",
        examples=["the run was re-tried by hand; nothing to undo"],
    )


class StepActionIn(ActionReasonIn):
    note: str = Field(
        "",
        max_length=REASON_MAX_CHARS,
        description="resolve: what was done by hand (required; `reason` is taken when `note` "
        "is not sent).",
        examples=["order 1001 cancelled in the provider's console"],
    )


AttestationKey = Annotated[str, Field(min_length=1, max_length=100)]
AttestationText = Annotated[str, Field(max_length=REASON_MAX_CHARS)]


class RollbackActionIn(ActionReasonIn):
    comment: str = Field(
        "",
        max_length=REASON_MAX_CHARS,
        description="approve and reject: what the approver checked, or why they say no "
        "(required for both; the ledger keeps it).",
        examples=["plan checked with the payments on-call; billing impact understood"],
    )
    attestations: dict[AttestationKey, AttestationText] = Field(
        default_factory=dict,
        description="approve: one comment per attestation the rollback's policy requires, by "
        "its key (the policy decision names them); a missing or empty one is a 400 naming "
        "`attestations`.",
        examples=[{"pii": "no personal data in the affected orders"}],
    )


ROLLBACK_ACTIONS = Literal["start", "pause", "resume", "abort", "approve", "reject"]
STEP_ACTIONS = Literal["retry", "skip", "resolve"]


def _governance_hooks() -> Any:
    """governance/api_hooks.py, found by name at call time (imports flow governance → rollbacks)."""
    from importlib import import_module

    from django.conf import settings

    if not settings.UNWIND_GOVERNANCE:
        raise ValidationError({"action": "approvals are not configured (UNWIND_GOVERNANCE)"})
    return import_module("governance.api_hooks")


@api.post(
    "/rollbacks/{id}/{action}",
    auth=auth,
    response={200: RollbackDetailOut} | ERRORS,
    summary="Act on a rollback: start, pause, resume, abort, approve or reject",
    description="The same actions as the buttons on the rollback page, with the same checks. "
    "`start`, `pause`, `resume`, `abort`: the account needs the operator role in one of the "
    "rollback's teams, and the rollback must be in a state that allows the action (400 naming "
    "`state` otherwise); `abort` needs a `reason`.\n\n"
    '`approve` and `reject` (body `{"comment": "…", "attestations": {"<key>": "…"}}`): '
    "the account needs the approver role, a team the rollback touches, and membership of the "
    "policy's eligible groups; four-eyes applies to service accounts too, so the account that "
    "requested the rollback may not approve it (403, ledgered). Both need a `comment`; "
    "`approve` needs a comment for every attestation the policy requires. The rollback must "
    "await approval (400 naming `state` otherwise). An approval that completes the policy's "
    "quorum moves it to `approved`; a rejection ends it `aborted`.",
    tags=["rollbacks"],
)
def rollback_act(
    request: HttpRequest,
    action: ROLLBACK_ACTIONS,
    payload: RollbackActionIn,
    id: int = ROLLBACK_ID,
):
    from rollbacks import engine

    user = request.auth
    rollback = access.get_rollback_for_user(user, id)
    if action in ("approve", "reject"):
        hooks = _governance_hooks()
        if action == "approve":
            hooks.approve(rollback, user, payload.comment, payload.attestations)
        else:
            hooks.reject(rollback, user, payload.comment)
    elif action == "start":
        engine.rollback_start(rollback=rollback, actor=user)
    elif action == "pause":
        engine.rollback_pause(rollback=rollback, actor=user, reason=payload.reason)
    elif action == "resume":
        engine.rollback_resume(rollback=rollback, actor=user)
    else:
        engine.rollback_abort(rollback=rollback, actor=user, reason=payload.reason)
    return rollback_out(rollback.pk, detail=True)


@api.post(
    "/rollbacks/{id}/steps/{step_id}/{action}",
    auth=auth,
    response={200: RollbackDetailOut} | ERRORS,
    summary="Act on a step: retry, skip or resolve",
    description="`retry` a failed step (a fresh budget of attempts); `skip` a step that has not "
    "succeeded (needs a `reason`: its effect stays undone and the rollback ends partially "
    "rolled back); `resolve` a manual step that a human did (needs a `note`; `reason` is "
    "accepted for it too).",
    tags=["rollbacks"],
)
def step_act(
    request: HttpRequest,
    action: STEP_ACTIONS,
    payload: StepActionIn,
    step_id: int,
    id: int = ROLLBACK_ID,
):
    rollback = access.get_rollback_for_user(request.auth, id)
    return _step_act(request.auth, rollback, step_id, action, payload)


@api.post(
    "/steps/{step_id}/{action}",
    auth=auth,
    response={200: RollbackDetailOut} | ERRORS,
    summary="Act on a step by its id alone: retry, skip or resolve",
    description="The same as `POST /rollbacks/{id}/steps/{step_id}/{action}`, for a client "
    "that knows only the step's id (`unwind retry 42`); answers the step's rollback. A step "
    "of a rollback the account cannot see is a 404.",
    tags=["rollbacks"],
)
def step_act_by_id(request: HttpRequest, action: STEP_ACTIONS, payload: StepActionIn, step_id: int):
    step = Step.objects.filter(pk=step_id).values_list("rollback_id", flat=True).first()
    try:
        rollback = access.get_rollback_for_user(request.auth, step or 0)
    except Http404:
        raise Http404("No such step.") from None
    return _step_act(request.auth, rollback, step_id, action, payload)


def _step_act(user: Any, rollback: Rollback, step_id: int, action: str, payload: StepActionIn):
    from rollbacks import engine

    step = (
        rollback.steps.filter(pk=step_id)
        .select_related("rollback", "contract", "forward_action")
        .first()
    )
    if step is None:
        raise Http404("No such step in this rollback.")
    if action == "retry":
        engine.step_retry(step=step, actor=user)
    elif action == "skip":
        engine.step_skip(step=step, actor=user, reason=payload.reason)
    else:
        engine.step_resolve(step=step, actor=user, note=payload.note or payload.reason)
    return rollback_out(rollback.pk, detail=True)


# The estate as code --------------------------------------------------------------------------


class EstateImportOut(Schema):
    applied: bool = Field(description="false for a dry run, or when nothing changed")
    sha256: str = Field(description="SHA-256 of the document's canonical JSON (keys sorted)")
    changes: list[str] = Field(
        description="The diff: + created, ~ changed", examples=[["+ system orders-db"]]
    )


class EstateErrorOut(ErrorOut):
    paths: list[dict[str, str]] = Field(
        default_factory=list,
        description="Every error with its path in the document (empty when the request, not "
        "the document, is at fault: a bad `dry_run`, say)",
        examples=[
            [
                {
                    "path": "contracts[2].actions.create_order.backoff.max_s",
                    "message": "must be at least initial_s (5)",
                }
            ]
        ],
    )


def _require_estate_admin(user: Any, action: str) -> None:
    if not access.has_role(user, "admin"):
        access.refuse(
            actor=user,
            action=action,
            subject=None,
            subject_type="estate",
            why="only an admin account may read or replace the estate document",
        )


@api.get(
    "/estate",
    auth=auth,
    response={200: dict} | ERRORS,
    summary="Export the estate as one document",
    description="Teams, systems, the dependency map and the newest contracts, with the field "
    "names of the estate document (docs/estate.md). Needs the admin role.",
    tags=["estate"],
)
def estate_export(request: HttpRequest):
    from rollbacks.estate import export_document

    _require_estate_admin(request.auth, "estate.export")
    return export_document()


@api.put(
    "/estate",
    auth=auth,
    response={200: EstateImportOut, 400: EstateErrorOut}
    | {k: v for k, v in ERRORS.items() if k != 400},
    summary="Import an estate document (all or nothing)",
    description="The body is the document as JSON (or YAML with Content-Type application/yaml). "
    "It is validated whole, then applied in one transaction that publishes new versions of the "
    "map and of changed contracts, ledgered with its SHA-256. `?dry_run=1` answers with the "
    "diff and changes nothing. Errors are listed with their path in the document.",
    tags=["estate"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
def estate_import(request: HttpRequest, dry_run: bool = False):
    from rollbacks.estate import EstateError, import_document, parse

    _require_estate_admin(request.auth, "estate.import")
    try:
        doc = parse(request.body)
        result = import_document(doc, actor=request.auth, dry_run=dry_run)
    except EstateError as exc:
        errors: dict[str, list[str]] = {}
        for path, message in exc.errors:
            errors.setdefault(path or "body", []).append(message)
        body = {
            "detail": f"{len(exc.errors)} error(s); nothing was changed",
            "errors": errors,
            "paths": [{"path": p, "message": m} for p, m in exc.errors],
        }
        return Status(400, body)
    return {"applied": result.applied, "sha256": result.sha256, "changes": result.changes}
