"""Writes of runbooks: publishing a version, and instantiating one into a planned rollback.

Each function is one transaction that also records its ledger entry.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

import ledger.services as ledger
from rollbacks import access, engine, runs
from rollbacks import services as estate
from rollbacks.contracts import format_errors
from rollbacks.models import Rollback, System
from runbooks import validation
from runbooks.models import IncidentType, Runbook, RunbookInstance, RunbookVersion
from runbooks.taxonomy import INCIDENT_TYPES

PROCESS_PREFIX = "runbook:"


def contract_actions(slugs=None) -> dict[str, dict | None]:
    """Every system (or those named) -> its newest contract's actions, None without one."""
    systems = System.objects.all() if slugs is None else System.objects.filter(slug__in=slugs)
    systems = list(systems)
    latest = estate.latest_contracts(systems)
    return {s.slug: (latest[s.pk].actions if s.pk in latest else None) for s in systems}


def incident_types_ensure(*, actor: Any) -> list[IncidentType]:
    """Create the starting incident types that are missing (ledgered); returns those created."""
    created = []
    with transaction.atomic():
        for slug, name, scope, cause, description in INCIDENT_TYPES:
            if IncidentType.objects.filter(slug=slug).exists():
                continue
            incident = IncidentType.objects.create(
                slug=slug, name=name, scope=scope, cause=cause, description=description
            )
            ledger.record(
                actor=actor,
                action="incident_type.created",
                subject=incident,
                payload={"slug": slug, "name": name, "scope": scope, "cause": cause},
            )
            created.append(incident)
    return created


def runbook_create(
    *, slug: str, name: str, incident_type, actor: Any, description: str = ""
) -> Runbook:
    """A new runbook, without versions yet (``runbook_version_publish`` adds them)."""
    runbook = Runbook(slug=slug, name=name, description=description, incident_type=incident_type)
    runbook.full_clean()
    with transaction.atomic():
        runbook.save()
        ledger.record(
            actor=actor,
            action="runbook.created",
            subject=runbook,
            payload={"slug": slug, "name": name, "incident_type": incident_type.slug},
        )
    return runbook


def validate_version(parameters: Any, steps: Any) -> None:
    """Raise ValidationError naming each bad field (``steps[0].system: unknown system 'x'``)."""
    errors = validation.version_errors(parameters, steps, contract_actions())
    if errors:
        raise ValidationError(format_errors(errors, ""))


def runbook_version_publish(
    *, runbook: Runbook, parameters: list, steps: list, actor: Any, note: str = ""
) -> RunbookVersion:
    """Publish a new version of ``runbook``; earlier versions stay as they were."""
    validate_version(parameters, steps)
    with transaction.atomic():
        version = RunbookVersion.objects.create(
            runbook=runbook,
            version=estate.next_version_locked(runbook, runbook.versions.all()),
            parameters=parameters,
            steps=steps,
            note=note,
            published_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        record_version_published(version, actor=actor)
    return version


def record_version_published(version: RunbookVersion, *, actor: Any) -> None:
    ledger.record(
        actor=actor,
        action="runbook.version.published",
        subject=version,
        payload={
            "runbook": version.runbook.slug,
            "version": version.version,
            "parameters": version.parameters,
            "steps": version.steps,
            "note": version.note,
        },
    )


# Who may use a runbook ---------------------------------------------------------------------


def sees_systems(user: Any, version: RunbookVersion) -> bool:
    """The user sees every system the version touches (else: the runbook is not theirs)."""
    slugs = version.system_slugs()
    return System.objects.visible_to(user).filter(slug__in=slugs).count() == len(slugs)


def may_use(user: Any, version: RunbookVersion) -> bool:
    """An operator (or admin) whose teams own every system the version touches."""
    return access.has_role(user, *access.OPERATOR_ROLES) and sees_systems(user, version)


def latest_versions_for(user: Any) -> list[RunbookVersion]:
    """The newest version of each runbook whose systems the user all sees, by runbook name."""
    found = []
    runbooks = Runbook.objects.published().select_related("incident_type").order_by("name")
    visible = set(System.objects.visible_to(user).values_list("slug", flat=True))
    for runbook in runbooks:
        version = runbook.latest_version()
        if version is not None and set(version.system_slugs()) <= visible:
            found.append(version)
    return found


def get_version_for_user(user: Any, slug: str) -> RunbookVersion:
    """The newest version of the runbook, when the user sees all its systems (else 404)."""
    from django.http import Http404

    runbook = Runbook.objects.filter(slug=slug).select_related("incident_type").first()
    version = runbook.latest_version() if runbook else None
    if version is None or not sees_systems(user, version):
        raise Http404("No such runbook.")
    return version


# Instantiating ------------------------------------------------------------------------------


def runbook_instantiate(
    *,
    version: RunbookVersion,
    actor: Any,
    values: Any,
    reason: str,
    is_drill: bool = False,
) -> Rollback:
    """Plan a rollback from a runbook version, through the engine's one planning path.

    1. Refuse an actor who is not an operator of every system's team (ledgered).
    2. Clean the values (typed, defaults filled) and check that each step's system still
       has a contract with the step's action type; refuse naming the field, writing nothing.
    3. In one transaction: a synthetic process run ``runbook:<slug>`` with a unique external
       id, a forward action per step (params filled in), the instance linking version and
       run (so the approval policies see it), then ``engine.rollback_plan(trigger="runbook")``
       and the ``runbook.instantiated`` entry.
    """
    runbook = version.runbook
    if not may_use(actor, version):
        access.refuse(
            actor=actor,
            action="runbook.instantiate",
            subject=version,
            why="only an operator of the teams owning every system of the runbook may use it",
        )
    reason = (reason or "").strip()
    errors: dict[str, list[str]] = {}
    if not reason:
        errors["reason"] = ["say why this runbook is being used"]
    cleaned, problems = validation.clean_values(version.parameters, values)
    actions = contract_actions(version.system_slugs())
    for i, step in enumerate(version.steps):
        problems += validation.coverage_errors(
            f"steps[{i}]", step["system"], step["action_type"], actions.get(step["system"])
        )
    for path, message in problems:
        errors.setdefault(path, []).append(message)
    if errors:
        raise engine.EngineError(errors)
    external_id = f"v{version.version}-{uuid.uuid4().hex[:12]}"
    with transaction.atomic():
        run, created = runs.run_register(
            process=f"{PROCESS_PREFIX}{runbook.slug}", external_id=external_id, actor=actor
        )
        if not created:  # 48 random bits collided: never reuse another instance's run
            raise engine.EngineError({"run": "could not take a new run id: try again"})
        for i, step in enumerate(version.steps, start=1):
            runs.action_report(
                run=run,
                system_slug=step["system"],
                action_type=step["action_type"],
                params=validation.render_step_params(step, cleaned),
                idempotency_key=f"runbook-{external_id}-{i}",
                actor=actor,
            )
        runs.run_fail(run=run, reason=f"runbook {version}: {reason}", actor=actor)
        instance = RunbookInstance.objects.create(
            version=version,
            run=run,
            values=cleaned,
            requested_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        rollback = engine.rollback_plan(
            run=run, actor=actor, reason=reason, is_drill=is_drill, trigger="runbook"
        )
        instance.rollback = rollback
        instance.save(update_fields=["rollback"])
        ledger.record(
            actor=actor,
            action="runbook.instantiated",
            subject=instance,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            reason=reason,
            payload={
                "runbook": runbook.slug,
                "version": version.version,
                "values": cleaned,
                "run": run.pk,
                "rollback": rollback.pk,
                "state": rollback.state,
                "is_drill": is_drill,
            },
        )
    return rollback


def instance_of(rollback: Rollback) -> RunbookInstance | None:
    """The runbook instance a rollback was planned from, if any."""
    return (
        RunbookInstance.objects.filter(run_id=rollback.run_id)
        .select_related("version__runbook")
        .first()
    )
