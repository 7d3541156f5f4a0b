"""The estate as code: export the whole estate as one document, and import one.

An import is validated whole before anything is written; each error carries its path in
the document (``contracts[2].actions.create_order.backoff.max_s``). It is applied in one
transaction that publishes new versions of the map and of the contracts that changed, and
is ledgered with the document's SHA-256. Importing the same document twice changes nothing
the second time. See docs/estate.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from django.contrib.auth.models import Group
from django.db import transaction

import ledger.services as ledger
from rollbacks import planning, services
from rollbacks.contracts import health_check_errors, validate_actions, validate_reconciliation
from rollbacks.models import DependencyEdge, DependencyMap, System, Team, slug_validator
from rollbacks.storable import string_problem

DOCUMENT_VERSION = 1
TOP_LEVEL = {"version", "teams", "systems", "dependencies", "contracts", "policies", "triggers"}
SYSTEM_FIELDS = {
    "slug",
    "name",
    "kind",
    "team",
    "tier",
    "environment",
    "health",
    "rehearsal",
    "max_in_flight",
}
MAX_IN_FLIGHT_LIMIT = 10_000


class EstateError(ValueError):
    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))


@dataclass
class ImportResult:
    sha256: str
    changes: list[str] = field(default_factory=list)
    applied: bool = False


class _DocumentLoader(yaml.SafeLoader):
    """YAML without aliases, and with timestamps left as text: an 8 KB document whose
    aliases expand to a million nodes took seconds (issue 16), and a document is JSON."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"an alias (*{event.anchor}) is not accepted here: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


_DocumentLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _json_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The path and problem of the first value a JSON document (and PostgreSQL) cannot hold."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if problem := string_problem(item):
                return where, problem
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or string_problem(key):
                    return where, f"the key {key!r} is not a string that can be stored"
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return where, "a number is too large (it overflows to infinity) or not a number"
        elif item is not None and not isinstance(item, bool | int | float):
            return where, f"{type(item).__name__} is not a JSON value"
    return None


def parse(text: str | bytes) -> Any:
    """YAML (a superset of JSON) to Python; a syntax error, an alias, or a value that is not
    JSON (or that PostgreSQL cannot store: NUL, a lone surrogate) is a document error."""
    try:
        doc = yaml.load(text, Loader=_DocumentLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise EstateError([("", f"not valid YAML or JSON: {exc}")]) from None
    except (RecursionError, ValueError) as exc:  # nested too deeply; an int of 5000 digits
        raise EstateError([("", f"not an acceptable document: {exc}")]) from None
    if problem := _json_problem(doc):
        raise EstateError([problem])
    return doc


def document_sha256(doc: Any) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_slug(value: Any) -> bool:
    try:
        slug_validator(value)
    except Exception:
        return False
    return isinstance(value, str)


# The columns' lengths (rollbacks/models.py): longer would be a DataError at INSERT.
SLUG_MAX = System._meta.get_field("slug").max_length
NAME_MAX = System._meta.get_field("name").max_length
ENVIRONMENT_MAX = System._meta.get_field("environment").max_length


def _too_long(value: str, limit: int) -> str:
    return f"is {len(value)} characters long: at most {limit}" if len(value) > limit else ""


def _list(doc: dict, key: str, errors: list) -> list:
    value = doc.get(key, [])
    if not isinstance(value, list):
        errors.append((key, "must be a list"))
        return []
    return value


class Extension(Protocol):
    """More sections of the document, owned by another app (governance adds ``policies`` and
    ``triggers``): validated with the rest, applied in the same transaction."""

    sections: tuple[str, ...]

    def validate(self, doc: dict, systems: set[str]) -> list[tuple[str, str]]: ...

    def apply(self, doc: dict, actor: Any, changes: list[str]) -> None: ...

    def export(self) -> dict[str, Any]: ...


_CONFIGURED = object()


def configured_extension(extension: Any = _CONFIGURED) -> Extension | None:
    """The extension named by ``settings.UNWIND_ESTATE_EXTENSION`` (governance's policies and
    triggers), unless the caller passed one (or None for the estate alone)."""
    if extension is not _CONFIGURED:
        return extension
    from django.conf import settings
    from django.utils.module_loading import import_string

    path = getattr(settings, "UNWIND_ESTATE_EXTENSION", "")
    return import_string(path) if path else None


def validate(doc: Any, extension: Any = _CONFIGURED) -> list[tuple[str, str]]:
    """Every error in the document, each with its path."""
    extension = configured_extension(extension)
    if not isinstance(doc, dict):
        return [("", "the document must be a mapping with version, teams, systems, …")]
    errors: list[tuple[str, str]] = []
    for key in sorted(set(doc) - TOP_LEVEL):
        errors.append((key, f"unknown section (known: {', '.join(sorted(TOP_LEVEL))})"))
    if doc.get("version") != DOCUMENT_VERSION:
        errors.append(("version", f"must be {DOCUMENT_VERSION}"))
    handled = extension.sections if extension else ()
    for key in ("policies", "triggers"):
        if doc.get(key) and key not in handled:
            errors.append((key, "is not supported without governance"))

    teams: set[str] = set()
    for i, team in enumerate(_list(doc, "teams", errors)):
        path = f"teams[{i}]"
        if not isinstance(team, dict):
            errors.append((path, "must be a mapping with slug and name"))
            continue
        if not _is_slug(team.get("slug")):
            errors.append((f"{path}.slug", "is required: lowercase letters, digits and hyphens"))
        elif problem := _too_long(team["slug"], SLUG_MAX):
            errors.append((f"{path}.slug", problem))
        elif team["slug"] in teams:
            errors.append((f"{path}.slug", f"{team['slug']!r} is listed twice"))
        else:
            teams.add(team["slug"])
        if not isinstance(team.get("name"), str) or not team["name"].strip():
            errors.append((f"{path}.name", "is required"))
        elif problem := _too_long(team["name"], NAME_MAX):
            errors.append((f"{path}.name", problem))

    systems: set[str] = set()
    kinds = set(System.Kind.values)
    for i, system in enumerate(_list(doc, "systems", errors)):
        path = f"systems[{i}]"
        if not isinstance(system, dict):
            errors.append((path, "must be a mapping"))
            continue
        for key in sorted(set(system) - SYSTEM_FIELDS):
            errors.append((f"{path}.{key}", "unknown field"))
        slug = system.get("slug")
        if not _is_slug(slug):
            errors.append((f"{path}.slug", "is required: lowercase letters, digits and hyphens"))
        elif problem := _too_long(slug, SLUG_MAX):
            errors.append((f"{path}.slug", problem))
        elif slug in systems:
            errors.append((f"{path}.slug", f"{slug!r} is listed twice"))
        else:
            systems.add(slug)
        if not isinstance(system.get("name"), str) or not system["name"].strip():
            errors.append((f"{path}.name", "is required"))
        elif problem := _too_long(system["name"], NAME_MAX):
            errors.append((f"{path}.name", problem))
        if not isinstance(system.get("kind"), str) or system["kind"] not in kinds:
            errors.append((f"{path}.kind", f"must be one of {', '.join(sorted(kinds))}"))
        if not isinstance(system.get("team"), str) or system["team"] not in teams:
            errors.append((f"{path}.team", f"unknown team {system.get('team')!r}"))
        tier = system.get("tier")
        if not isinstance(tier, int) or isinstance(tier, bool) or not 1 <= tier <= 4:
            errors.append((f"{path}.tier", "must be a whole number from 1 (most critical) to 4"))
        if "environment" in system and not isinstance(system["environment"], str):
            errors.append((f"{path}.environment", "must be a string"))
        elif problem := _too_long(system.get("environment", ""), ENVIRONMENT_MAX):
            errors.append((f"{path}.environment", problem))
        if "rehearsal" in system and not isinstance(system["rehearsal"], bool):
            errors.append((f"{path}.rehearsal", "must be true or false"))
        cap = system.get("max_in_flight")
        if cap is not None and (
            not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= MAX_IN_FLIGHT_LIMIT
        ):
            errors.append(
                (
                    f"{path}.max_in_flight",
                    f"must be a whole number from 1 to {MAX_IN_FLIGHT_LIMIT} (steps of this "
                    "system running at once), or left out for no limit",
                )
            )
        for message in health_check_errors(system.get("health", {})):
            errors.append((f"{path}.health", message))

    edges: list[planning.Edge] = []
    seen_edges: dict[tuple, int] = {}
    for i, dep in enumerate(_list(doc, "dependencies", errors)):
        path = f"dependencies[{i}]"
        if isinstance(dep, dict) and set(dep) == {"unwind", "before"}:
            pair, names = (dep["unwind"], dep["before"]), ("unwind", "before")
        elif isinstance(dep, dict) and set(dep) == {"tandem"} and isinstance(dep["tandem"], list):
            if len(dep["tandem"]) != 2:
                errors.append((f"{path}.tandem", "must name exactly two systems"))
                continue
            pair, names = tuple(dep["tandem"]), ("tandem[0]", "tandem[1]")
        else:
            errors.append((path, "must be {unwind: A, before: B} or {tandem: [A, B]}"))
            continue
        bad = False
        for name, slug in zip(names, pair, strict=True):
            if not isinstance(slug, str) or slug not in systems:
                errors.append((f"{path}.{name}", f"unknown system {slug!r}"))
                bad = True
        if not bad and pair[0] == pair[1]:
            errors.append((path, f"{pair[0]} cannot depend on itself"))
            bad = True
        if bad:
            continue
        key = pair if "unwind" in dep else ("tandem", *sorted(pair))
        if key in seen_edges:
            errors.append((path, f"repeats dependencies[{seen_edges[key]}]"))
            continue
        seen_edges[key] = i
        edges.append(planning.Before(*pair) if "unwind" in dep else planning.Tandem(*pair))
    if edges:
        try:
            planning.check_acyclic(edges)
        except planning.CycleError as exc:
            errors.append(("dependencies", str(exc)))

    contracted: set[str] = set()
    for i, contract in enumerate(_list(doc, "contracts", errors)):
        path = f"contracts[{i}]"
        if not isinstance(contract, dict) or set(contract) - {
            "system",
            "actions",
            "reconciliation",
        }:
            errors.append((path, "must be a mapping with system, actions and reconciliation"))
            continue
        slug = contract.get("system")
        if not isinstance(slug, str) or slug not in systems:
            errors.append((f"{path}.system", f"unknown system {slug!r}"))
        elif slug in contracted:
            errors.append((f"{path}.system", f"{slug!r} has two contracts; merge their actions"))
        else:
            contracted.add(slug)
        for sub, message in validate_actions(contract.get("actions")):
            errors.append((f"{path}.actions" + (f".{sub}" if sub else ""), message))
        for sub, message in validate_reconciliation(contract.get("reconciliation")):
            errors.append((f"{path}.reconciliation{sub}", message))
    if extension is not None:
        errors += extension.validate(doc, systems)
    return errors


def _system_fields(system: dict) -> dict[str, Any]:
    return {
        "name": system["name"],
        "kind": system["kind"],
        "tier": system["tier"],
        "environment": system.get("environment", "production"),
        "health_check": system.get("health") or {},
        "is_rehearsal": system.get("rehearsal", False),
        "max_in_flight": system.get("max_in_flight"),
    }


def _edge_triples(doc: dict) -> list[tuple[str, str, str]]:
    triples = []
    for dep in doc.get("dependencies", []):
        if "unwind" in dep:
            triples.append((DependencyEdge.Kind.BEFORE, dep["unwind"], dep["before"]))
        else:
            triples.append((DependencyEdge.Kind.TANDEM, dep["tandem"][0], dep["tandem"][1]))
    return triples


def _normal_edges(triples) -> set[tuple[str, str, str]]:
    return {
        (k, a, b) if k == DependencyEdge.Kind.BEFORE else (k, *sorted((a, b)))
        for k, a, b in triples
    }


def import_document(
    doc: Any, *, actor: Any, dry_run: bool = False, extension: Any = _CONFIGURED
) -> ImportResult:
    """Validate ``doc`` whole, then (unless ``dry_run``) apply it in one transaction.

    Raises :class:`EstateError` with every error and changes nothing when it is invalid.
    """
    extension = configured_extension(extension)
    errors = validate(doc, extension)
    if errors:
        raise EstateError(errors)
    result = ImportResult(sha256=document_sha256(doc))
    with transaction.atomic():
        _apply(doc, actor, result)
        if extension is not None:
            extension.apply(doc, actor, result.changes)
        if dry_run or not result.changes:
            transaction.set_rollback(True)
        else:
            ledger.record(
                actor=actor,
                action="estate.imported",
                subject_type="estate",
                subject_id=result.sha256[:16],
                payload={"sha256": result.sha256, "changes": result.changes},
            )
            result.applied = True
    return result


def _apply(doc: dict, actor: Any, result: ImportResult) -> None:
    changes = result.changes
    teams = {t.slug: t for t in Team.objects.select_for_update()}
    for team in doc.get("teams", []):
        existing = teams.get(team["slug"])
        if existing is None:
            group, _ = Group.objects.get_or_create(name=f"team:{team['slug']}")
            teams[team["slug"]] = Team.objects.create(
                slug=team["slug"], name=team["name"], group=group
            )
            changes.append(f"+ team {team['slug']}")
        elif existing.name != team["name"]:
            changes.append(f"~ team {team['slug']}: name {existing.name!r} → {team['name']!r}")
            existing.name = team["name"]
            existing.save(update_fields=["name"])

    systems = {s.slug: s for s in System.objects.select_for_update()}
    for spec in doc.get("systems", []):
        wanted = _system_fields(spec) | {"team": teams[spec["team"]]}
        existing = systems.get(spec["slug"])
        if existing is None:
            systems[spec["slug"]] = System.objects.create(slug=spec["slug"], **wanted)
            changes.append(f"+ system {spec['slug']}")
            continue
        diffs = [
            f"{name} {getattr(existing, name)!r} → {value!r}"
            for name, value in wanted.items()
            if getattr(existing, name) != value
        ]
        if diffs:
            changes.append(f"~ system {spec['slug']}: " + ", ".join(diffs))
            for name, value in wanted.items():
                setattr(existing, name, value)
            existing.save()

    triples = _edge_triples(doc)
    latest = DependencyMap.objects.latest_published()
    current = set()
    if latest is not None:
        current = _normal_edges(latest.edges.values_list("kind", "first__slug", "second__slug"))
    if _normal_edges(triples) != current:
        dep_map = services.dependency_map_publish(edges=triples, actor=actor, note="estate import")
        changes.append(f"+ dependency map v{dep_map.version} ({len(triples)} edges)")

    latest_contracts = services.latest_contracts()
    for spec in doc.get("contracts", []):
        system = systems[spec["system"]]
        existing = latest_contracts.get(system.pk)
        checks = spec.get("reconciliation") or []
        if (
            existing is None
            or existing.actions != spec["actions"]
            or existing.reconciliation != checks
        ):
            contract = services.contract_publish(
                system=system,
                actions=spec["actions"],
                reconciliation=checks,
                actor=actor,
                note="estate import",
            )
            changes.append(f"+ contract {system.slug} v{contract.version}")


def export_document(extension: Any = _CONFIGURED) -> dict[str, Any]:
    """The current estate as a document that :func:`import_document` reads back unchanged."""
    extension = configured_extension(extension)
    doc: dict[str, Any] = {"version": DOCUMENT_VERSION}
    doc["teams"] = [{"slug": t.slug, "name": t.name} for t in Team.objects.order_by("slug")]
    systems = []
    for s in System.objects.select_related("team").order_by("slug"):
        item = {
            "slug": s.slug,
            "name": s.name,
            "kind": s.kind,
            "team": s.team.slug,
            "tier": s.tier,
            "environment": s.environment,
        }
        if s.health_check:
            item["health"] = s.health_check
        if s.is_rehearsal:
            item["rehearsal"] = True
        if s.max_in_flight is not None:
            item["max_in_flight"] = s.max_in_flight
        systems.append(item)
    doc["systems"] = systems
    deps = []
    latest = DependencyMap.objects.latest_published()
    if latest is not None:
        for kind, a, b in latest.edges.order_by("id").values_list(
            "kind", "first__slug", "second__slug"
        ):
            deps.append(
                {"unwind": a, "before": b}
                if kind == DependencyEdge.Kind.BEFORE
                else {"tandem": [a, b]}
            )
    doc["dependencies"] = deps
    contracts = services.latest_contracts()
    by_id = {s.pk: s.slug for s in System.objects.filter(pk__in=contracts)}
    doc["contracts"] = [
        {"system": by_id[sid], "actions": c.actions}
        | ({"reconciliation": c.reconciliation} if c.reconciliation else {})
        for sid, c in sorted(contracts.items(), key=lambda kv: by_id[kv[0]])
    ]
    if extension is not None:
        doc |= extension.export()
    return doc
