"""Writes to the estate. Each function is one transaction that also records its ledger entry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Model, QuerySet

import ledger.services as ledger
from rollbacks import planning
from rollbacks.contracts import (
    format_errors,
    format_reconciliation_errors,
    validate_actions,
    validate_reconciliation,
)
from rollbacks.models import Contract, DependencyEdge, DependencyMap, System


def edges_for_planning(edges: Iterable[tuple[str, str, str]]) -> list[planning.Edge]:
    """(kind, first slug, second slug) triples to planning edges."""
    return [
        planning.Before(a, b) if kind == DependencyEdge.Kind.BEFORE else planning.Tandem(a, b)
        for kind, a, b in edges
    ]


def map_edges(dep_map: DependencyMap | None) -> list[planning.Edge]:
    """The planning edges of a published map (none for no map)."""
    if dep_map is None:
        return []
    rows = dep_map.edges.values_list("kind", "first__slug", "second__slug")
    return edges_for_planning(rows)


def validate_edges(edges: list[tuple[str, str, str]]) -> None:
    """Refuse a self edge, a duplicate, or a cycle, naming the systems concerned."""
    seen = set()
    for kind, a, b in edges:
        if a == b:
            raise ValidationError(f"{a} cannot depend on itself.")
        key = (kind, a, b) if kind == DependencyEdge.Kind.BEFORE else (kind, *sorted((a, b)))
        if key in seen:
            raise ValidationError(f"the edge {a} {kind} {b} is listed twice.")
        seen.add(key)
    try:
        planning.check_acyclic(edges_for_planning(edges))
    except planning.CycleError as exc:
        raise ValidationError(
            f"The dependency map has a cycle: {str(exc).removeprefix('dependency cycle: ')}. "
            "Remove one of these edges."
        ) from None


MAP_LOCK = "unwind.dependency_map"  # the advisory lock of map publishing


def next_map_version() -> int:
    """The number of the next version of the map: one after the newest. Call it inside the
    transaction that creates the version. The map has no owner row to lock (as contracts
    and runbooks have: ``next_version_locked``), so on PostgreSQL its publishers take one
    transaction-level advisory lock, held until commit; SQLite's transactions are
    ``IMMEDIATE`` (config/settings.py), so writers already take turns there."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("next_map_version() belongs inside the transaction that publishes")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [MAP_LOCK])
    return (DependencyMap.objects.aggregate(v=Max("version"))["v"] or 0) + 1


def dependency_map_publish(
    *, edges: list[tuple[str, str, str]], actor: Any, note: str = ""
) -> DependencyMap:
    """Publish a new version of the whole map from (kind, first slug, second slug) triples."""
    validate_edges(edges)
    slugs = {s for _, a, b in edges for s in (a, b)}
    systems = {s.slug: s for s in System.objects.filter(slug__in=slugs)}
    unknown = sorted(slugs - systems.keys())
    if unknown:
        raise ValidationError(f"unknown systems: {', '.join(unknown)}")
    with transaction.atomic():
        dep_map = DependencyMap.objects.create(
            version=next_map_version(),
            published_by=actor if getattr(actor, "is_authenticated", False) else None,
            note=note,
        )
        DependencyEdge.objects.bulk_create(
            DependencyEdge(map=dep_map, kind=kind, first=systems[a], second=systems[b])
            for kind, a, b in edges
        )
        record_map_published(dep_map, actor=actor)
    return dep_map


def record_map_published(dep_map: DependencyMap, *, actor: Any) -> None:
    edges = [
        [k, a, b] for k, a, b in dep_map.edges.values_list("kind", "first__slug", "second__slug")
    ]
    ledger.record(
        actor=actor,
        action="estate.map.published",
        subject=dep_map,
        payload={"version": dep_map.version, "edges": edges, "note": dep_map.note},
    )


def validate_contract_actions(actions: Any) -> None:
    errors = validate_actions(actions)
    if errors:
        raise ValidationError(format_errors(errors, "actions"))


def validate_contract_reconciliation(checks: Any) -> None:
    errors = validate_reconciliation(checks)
    if errors:
        raise ValidationError(format_reconciliation_errors(errors))


def next_version_locked(owner: Model, versions: QuerySet) -> int:
    """The number of ``owner``'s next immutable version (a system's contracts, a runbook's
    versions): one after the newest of ``versions``. Call it inside the transaction that
    creates the version: it locks ``owner``'s row until commit, so two publishers (the
    services, the admin) cannot take the same number."""
    type(owner)._default_manager.select_for_update().get(pk=owner.pk)
    return (versions.aggregate(v=Max("version"))["v"] or 0) + 1


def contract_publish(
    *,
    system: System,
    actions: dict,
    actor: Any,
    note: str = "",
    reconciliation: list | None = None,
) -> Contract:
    """Publish a new contract version for ``system``; earlier versions stay as they were."""
    validate_contract_actions(actions)
    validate_contract_reconciliation(reconciliation)
    with transaction.atomic():
        contract = Contract.objects.create(
            system=system,
            version=next_version_locked(system, system.contracts.all()),
            actions=actions,
            reconciliation=reconciliation or [],
            note=note,
            published_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        record_contract_published(contract, actor=actor)
    return contract


def record_contract_published(contract: Contract, *, actor: Any) -> None:
    ledger.record(
        actor=actor,
        action="estate.contract.published",
        subject=contract,
        payload={
            "system": contract.system.slug,
            "version": contract.version,
            "actions": contract.actions,
            "reconciliation": contract.reconciliation,
        },
    )


def latest_contracts(systems: Iterable[System] | None = None) -> dict[int, Contract]:
    """The newest contract of each system: system id -> contract."""
    qs = Contract.objects.order_by("system_id", "-version")
    if systems is not None:
        qs = qs.filter(system__in=list(systems))
    latest: dict[int, Contract] = {}
    for contract in qs:
        latest.setdefault(contract.system_id, contract)
    return latest
