"""The governance sections of the estate document: approval policies and trigger rules.

``settings.UNWIND_ESTATE_EXTENSION`` names ``SECTIONS``, so ``rollbacks.estate``'s import
and export (commands, API, demo) include these sections; it owns the rest of the document
and the transaction. The shapes::

    policies:
      - name: critical
        scope: {tiers: [1], environments: [production], systems: [orders-db],
                triggers: [manual, api, alert, runbook], drills: any,   # any | real | drill
                runbooks: [checkout-off@1]}   # runbook versions (published before the import)
        preapproves_runbooks: false   # true: pre-approve those runbook versions (approvals: 0)
        approvals: 2
        groups: [approver]            # approvers must be in one of these (else: the role)
        four_eyes: true
        approver_from_each_team: false
        expires_after_s: 1800
        attestations: [{key: pii, label: Personal data impact checked}]
        gate_tiers: [1]
        auto_start: false
    triggers:
      - {name: checkout-errors, match: {alertname: CheckoutErrorRate}, run_label: process_run,
         min_alerts: 1, reason: "alert {alertname} fired", drill: false, service_account: alert-bot}

Policies and rules that the document does not list are left alone, like systems.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError

from governance.models import ApprovalPolicy, TriggerRule
from governance.validation import (
    LABEL_NAME,
    clean_attestations,
    clean_environments,
    clean_match,
    clean_tiers,
    clean_trigger_kinds,
    preapproval_errors,
)
from rollbacks import estate
from rollbacks.models import System

POLICY_FIELDS = {
    "name",
    "description",
    "active",
    "scope",
    "approvals",
    "groups",
    "four_eyes",
    "approver_from_each_team",
    "expires_after_s",
    "attestations",
    "gate_tiers",
    "auto_start",
    "preapproves_runbooks",
}
SCOPE_FIELDS = {"systems", "tiers", "environments", "triggers", "drills", "runbooks"}
TRIGGER_FIELDS = {
    "name",
    "active",
    "match",
    "run_label",
    "min_alerts",
    "reason",
    "drill",
    "service_account",
}


def _policy_values(spec: dict) -> dict[str, Any]:
    """A policy of the document as model field values (defaults filled in)."""
    scope = spec.get("scope") or {}
    return {
        "description": spec.get("description", ""),
        "is_active": spec.get("active", True),
        "tiers": sorted(set(scope.get("tiers", []))),
        "environments": sorted(set(scope.get("environments", []))),
        "trigger_kinds": sorted(set(scope.get("triggers", []))),
        "drill_scope": scope.get("drills", ApprovalPolicy.DrillScope.ANY),
        "approvals_required": spec.get("approvals", 1),
        "four_eyes": spec.get("four_eyes", True),
        "approver_from_each_team": spec.get("approver_from_each_team", False),
        "expires_after_s": spec.get("expires_after_s"),
        "attestations": spec.get("attestations", []),
        "gate_tiers": sorted(set(spec.get("gate_tiers", []))),
        "auto_start": spec.get("auto_start", False),
        "preapproves_runbooks": spec.get("preapproves_runbooks", False),
    }


def _runbook_versions(refs: list[str]) -> list:
    """``slug@version`` references as RunbookVersion rows (the validated ones exist)."""
    from runbooks.models import RunbookVersion

    found = []
    for ref in refs:
        slug, _, number = ref.partition("@")
        found.extend(RunbookVersion.objects.filter(runbook__slug=slug, version=number))
    return found


def _runbook_ref_error(ref: Any) -> str | None:
    from runbooks.models import RunbookVersion

    slug, _, number = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    if not number.isdigit():
        return f"{ref!r} is not a runbook version: write <slug>@<version>, e.g. checkout-off@1"
    if not RunbookVersion.objects.filter(runbook__slug=slug, version=int(number)).exists():
        return f"unknown runbook version {ref!r}: publish it before importing this document"
    return None


def _trigger_values(spec: dict) -> dict[str, Any]:
    return {
        "is_active": spec.get("active", True),
        "match": spec.get("match", {}),
        "run_label": spec.get("run_label", "process_run"),
        "min_alerts": spec.get("min_alerts", 1),
        "reason_template": spec.get("reason", "alert {alertname} fired"),
        "drill": spec.get("drill", False),
    }


def _check(errors: list, path: str, clean, value: Any) -> None:
    try:
        clean(value)
    except ValidationError as exc:
        errors.extend((path, message) for message in exc.messages)


def _named_list(doc: dict, key: str, fields: set[str], errors: list) -> list[tuple[str, dict]]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        errors.append((key, "must be a list"))
        return []
    seen: set[str] = set()
    found = []
    for i, spec in enumerate(items):
        path = f"{key}[{i}]"
        if not isinstance(spec, dict):
            errors.append((path, "must be a mapping"))
            continue
        for extra in sorted(set(spec) - fields):
            errors.append((f"{path}.{extra}", "unknown field"))
        name = spec.get("name")
        if not isinstance(name, str) or not estate._is_slug(name):
            errors.append((f"{path}.name", "is required: lowercase letters, digits and hyphens"))
        elif name in seen:
            errors.append((f"{path}.name", f"{name!r} is listed twice"))
        else:
            seen.add(name)
        found.append((path, spec))
    return found


class GovernanceSections:
    sections = ("policies", "triggers")

    def validate(self, doc: dict, systems: set[str]) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for path, spec in _named_list(doc, "policies", POLICY_FIELDS, errors):
            scope = spec.get("scope") or {}
            if not isinstance(scope, dict):
                errors.append((f"{path}.scope", "must be a mapping"))
                scope = {}
            for extra in sorted(set(scope) - SCOPE_FIELDS):
                errors.append(
                    (
                        f"{path}.scope.{extra}",
                        f"unknown field (known: {', '.join(sorted(SCOPE_FIELDS))})",
                    )
                )
            for j, slug in enumerate(
                scope.get("systems", []) if isinstance(scope.get("systems", []), list) else [None]
            ):
                if not isinstance(slug, str) or slug not in systems:
                    errors.append((f"{path}.scope.systems[{j}]", f"unknown system {slug!r}"))
            _check(errors, f"{path}.scope.tiers", clean_tiers, scope.get("tiers", []))
            _check(
                errors,
                f"{path}.scope.environments",
                clean_environments,
                scope.get("environments", []),
            )
            _check(errors, f"{path}.scope.triggers", clean_trigger_kinds, scope.get("triggers", []))
            refs = scope.get("runbooks", [])
            if not isinstance(refs, list):
                errors.append((f"{path}.scope.runbooks", "must be a list of <slug>@<version>"))
                refs = []
            for j, ref in enumerate(refs):
                problem = _runbook_ref_error(ref)
                if problem:
                    errors.append((f"{path}.scope.runbooks[{j}]", problem))
            if "preapproves_runbooks" in spec and not isinstance(
                spec["preapproves_runbooks"], bool
            ):
                errors.append((f"{path}.preapproves_runbooks", "must be true or false"))
            elif spec.get("preapproves_runbooks"):
                problems = preapproval_errors(
                    preapproves=True, names_runbooks=bool(refs), approvals=spec.get("approvals")
                )
                for field, message in problems.items():
                    where = {"runbooks": "scope.runbooks", "approvals_required": "approvals"}[field]
                    errors.append((f"{path}.{where}", message))
            if scope.get("drills", "any") not in ApprovalPolicy.DrillScope.values:
                errors.append((f"{path}.scope.drills", "must be any, real or drill"))
            approvals = spec.get("approvals")
            if approvals is None:
                errors.append((f"{path}.approvals", "is required: how many approvals (0 for none)"))
            elif (
                isinstance(approvals, bool)
                or not isinstance(approvals, int)
                or not 0 <= approvals <= 20
            ):
                errors.append((f"{path}.approvals", "must be a whole number from 0 to 20"))
            groups = spec.get("groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
                errors.append((f"{path}.groups", "must be a list of group names"))
            for flag in ("four_eyes", "approver_from_each_team", "auto_start", "active"):
                if flag in spec and not isinstance(spec[flag], bool):
                    errors.append((f"{path}.{flag}", "must be true or false"))
            expiry = spec.get("expires_after_s")
            if expiry is not None and (
                isinstance(expiry, bool) or not isinstance(expiry, int) or expiry < 60
            ):
                errors.append(
                    (f"{path}.expires_after_s", "must be a whole number of seconds, at least 60")
                )
            _check(errors, f"{path}.attestations", clean_attestations, spec.get("attestations", []))
            _check(errors, f"{path}.gate_tiers", clean_tiers, spec.get("gate_tiers", []))
        accounts = set(get_user_model().objects.values_list("username", flat=True))
        for path, spec in _named_list(doc, "triggers", TRIGGER_FIELDS, errors):
            if not spec.get("match"):
                errors.append(
                    (
                        f"{path}.match",
                        "is required: label matchers (an empty one would match every alert)",
                    )
                )
            else:
                _check(errors, f"{path}.match", clean_match, spec["match"])
            label = spec.get("run_label", "process_run")
            if not isinstance(label, str) or not LABEL_NAME.match(label):
                errors.append((f"{path}.run_label", "must be a label name (letters, digits and _)"))
            min_alerts = spec.get("min_alerts", 1)
            if isinstance(min_alerts, bool) or not isinstance(min_alerts, int) or min_alerts < 1:
                errors.append((f"{path}.min_alerts", "must be a whole number, at least 1"))
            if "reason" in spec and not isinstance(spec["reason"], str):
                errors.append((f"{path}.reason", "must be text"))
            account = spec.get("service_account")
            if account is not None and account not in accounts:
                errors.append((f"{path}.service_account", f"unknown account {account!r}"))
        return errors

    def apply(self, doc: dict, actor: Any, changes: list[str]) -> None:
        for spec in doc.get("policies") or []:
            wanted = _policy_values(spec)
            groups = sorted(spec.get("groups", []))
            slugs = sorted((spec.get("scope") or {}).get("systems", []))
            refs = sorted((spec.get("scope") or {}).get("runbooks", []))
            policy = ApprovalPolicy.objects.filter(name=spec["name"]).first()
            if policy is None:
                policy = ApprovalPolicy.objects.create(name=spec["name"], **wanted)
                changes.append(f"+ policy {policy.name}")
                diffs = ["new"]
            else:
                diffs = [
                    f"{k} {getattr(policy, k)!r} → {v!r}"
                    for k, v in wanted.items()
                    if getattr(policy, k) != v
                ]
                if sorted(policy.eligible_groups.values_list("name", flat=True)) != groups:
                    diffs.append(f"groups → {groups}")
                if sorted(policy.systems.values_list("slug", flat=True)) != slugs:
                    diffs.append(f"systems → {slugs}")
                if sorted(str(v).replace(" v", "@") for v in policy.runbooks.all()) != refs:
                    diffs.append(f"runbooks → {refs}")
                if diffs:
                    for k, v in wanted.items():
                        setattr(policy, k, v)
                    policy.save()
                    changes.append(f"~ policy {policy.name}: " + ", ".join(diffs))
            if diffs:
                for name in groups:
                    if not Group.objects.filter(name=name).exists():
                        changes.append(f"+ group {name}")
                policy.eligible_groups.set([Group.objects.get_or_create(name=n)[0] for n in groups])
                policy.systems.set(System.objects.filter(slug__in=slugs))
                policy.runbooks.set(_runbook_versions(refs))
        for spec in doc.get("triggers") or []:
            wanted = _trigger_values(spec)
            account = spec.get("service_account")
            wanted["service_account"] = (
                get_user_model().objects.get(username=account) if account else None
            )
            rule = TriggerRule.objects.filter(name=spec["name"]).first()
            if rule is None:
                TriggerRule.objects.create(name=spec["name"], **wanted)
                changes.append(f"+ trigger {spec['name']}")
                continue
            diffs = [k for k, v in wanted.items() if getattr(rule, k) != v]
            if diffs:
                for k, v in wanted.items():
                    setattr(rule, k, v)
                rule.save()
                changes.append(f"~ trigger {rule.name}: " + ", ".join(diffs))

    def export(self) -> dict[str, Any]:
        policies = []
        for p in ApprovalPolicy.objects.prefetch_related(
            "eligible_groups", "systems", "runbooks__runbook"
        ).order_by("name"):
            scope = {
                "systems": sorted(s.slug for s in p.systems.all()),
                "tiers": p.tiers,
                "environments": p.environments,
                "triggers": p.trigger_kinds,
                "drills": p.drill_scope,
                "runbooks": sorted(f"{v.runbook.slug}@{v.version}" for v in p.runbooks.all()),
            }
            policies.append(
                {
                    "name": p.name,
                    "description": p.description,
                    "active": p.is_active,
                    "scope": {
                        k: v
                        for k, v in scope.items()
                        if v not in ([], ApprovalPolicy.DrillScope.ANY)
                    },
                    "approvals": p.approvals_required,
                    "groups": sorted(g.name for g in p.eligible_groups.all()),
                    "four_eyes": p.four_eyes,
                    "approver_from_each_team": p.approver_from_each_team,
                    "expires_after_s": p.expires_after_s,
                    "attestations": p.attestations,
                    "gate_tiers": p.gate_tiers,
                    "auto_start": p.auto_start,
                }
                | ({"preapproves_runbooks": True} if p.preapproves_runbooks else {})
            )
        triggers = [
            {
                "name": r.name,
                "active": r.is_active,
                "match": r.match,
                "run_label": r.run_label,
                "min_alerts": r.min_alerts,
                "reason": r.reason_template,
                "drill": r.drill,
                "service_account": r.service_account.get_username() if r.service_account else None,
            }
            for r in TriggerRule.objects.select_related("service_account").order_by("name")
        ]
        return {"policies": policies, "triggers": triggers}


# Named by settings.UNWIND_ESTATE_EXTENSION: every estate import and export includes it.
SECTIONS = GovernanceSections()
