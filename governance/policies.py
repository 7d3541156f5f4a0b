"""Which approval policies apply to a rollback, and what they require together.

Every active policy whose scope matches applies; the strictest combination wins:

- approvals: the largest number any matching policy asks for;
- eligible groups: an approver must belong to the groups of *every* matching policy that
  names groups (the approver role when none does);
- four-eyes, an approver from each team: required if any policy requires it (four-eyes is
  always on for the requester: invariant 6);
- expiry: the shortest;
- attestations and gated tiers: all of them;
- auto-start of alert-triggered rollbacks: only if every matching policy allows it.

A policy may name runbook versions (``runbooks``): it then applies only to rollbacks
instantiated from one of them. With ``preapproves_runbooks`` it *pre-approves* them: the
approvals asked by matching policies that name neither systems nor runbooks — the broad
rules by tier, environment or trigger — are waived (they count as 0, their approver
requirements drop). A matching policy that names systems or runbooks and does not itself
pre-approve is a targeted, stricter decision and still counts, strictest wins among what
is left; stage gates stay, from every matching policy. See docs/runbooks.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from governance.models import ApprovalPolicy
from rollbacks.models import Rollback


@dataclass
class Requirements:
    approvals: int = 0
    # Group names an approver must belong to; None when no policy names groups (then the
    # approver role is enough); [] when the policies' groups do not overlap (nobody may).
    eligible_groups: list[str] | None = None
    four_eyes: bool = True
    approver_from_each_team: bool = False
    expires_after_s: int | None = None
    attestations: list[dict] = field(default_factory=list)
    gate_tiers: list[int] = field(default_factory=list)
    auto_start: bool = False
    policies: list[str] = field(default_factory=list)
    preapproved_by: list[str] = field(default_factory=list)  # pre-approving policies
    waived: list[str] = field(default_factory=list)  # policies whose approvals they waive
    reasons: dict[str, str] = field(default_factory=dict)  # policy -> why it applies

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Requirements:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _why_in_scope(
    policy: ApprovalPolicy,
    rollback: Rollback,
    systems: list,
    trigger: str,
    runbook_version: object | None = None,
) -> str | None:
    """Why the policy applies to the rollback, or None when it does not."""
    runbooks = {v.pk: v for v in policy.runbooks.all()}
    if runbooks and (runbook_version is None or runbook_version.pk not in runbooks):
        return None
    if policy.trigger_kinds and trigger not in policy.trigger_kinds:
        return None
    if policy.drill_scope == ApprovalPolicy.DrillScope.REAL and rollback.is_drill:
        return None
    if policy.drill_scope == ApprovalPolicy.DrillScope.DRILL and not rollback.is_drill:
        return None
    named = {s.pk for s in policy.systems.all()}
    hits = [
        s
        for s in systems
        if (not named or s.pk in named)
        and (not policy.tiers or s.tier in policy.tiers)
        and (not policy.environments or s.environment in policy.environments)
    ]
    if not hits:
        return None
    scope = []
    if runbooks:
        scope.append(f"runbook {runbook_version}")
    if named:
        scope.append("named systems")
    if policy.tiers:
        scope.append("tier " + "/".join(str(t) for t in policy.tiers))
    if policy.environments:
        scope.append("/".join(policy.environments))
    if policy.trigger_kinds:
        scope.append("triggered by " + "/".join(policy.trigger_kinds))
    touched = ", ".join(sorted({s.slug for s in hits}))
    return f"{' '.join(scope) or 'every rollback'}: {touched}"


def _is_broad(policy: ApprovalPolicy) -> bool:
    """Names neither systems nor runbooks: a pre-approval waives its approvals."""
    return not policy.systems.all() and not policy.runbooks.all()


def evaluate(rollback: Rollback) -> tuple[Requirements, str]:
    """The combined requirements of every matching policy, and a sentence saying why."""
    from runbooks.services import instance_of

    systems = list({step.system for step in rollback.steps.select_related("system")})
    instance = instance_of(rollback)
    runbook_version = instance.version if instance else None
    req = Requirements()
    group_sets: list[set[str]] = []
    expiries = []
    auto_start = []
    matching = [
        (policy, why)
        for policy in ApprovalPolicy.objects.filter(is_active=True).prefetch_related(
            "systems", "eligible_groups", "runbooks__runbook"
        )
        if (why := _why_in_scope(policy, rollback, systems, rollback.trigger, runbook_version))
        is not None
    ]
    # _why_in_scope matched a policy naming runbooks only for an instance of one of them.
    req.preapproved_by = [
        p.name for p, _ in matching if p.preapproves_runbooks and p.runbooks.all()
    ]
    for policy, why in matching:
        req.policies.append(policy.name)
        req.reasons[policy.name] = why
        req.gate_tiers = sorted(set(req.gate_tiers) | set(policy.gate_tiers))
        auto_start.append(policy.auto_start)
        if policy.name in req.preapproved_by:
            continue  # a pre-approval asks for no approval by definition
        if req.preapproved_by and _is_broad(policy):
            req.waived.append(policy.name)
            continue
        req.approvals = max(req.approvals, policy.approvals_required)
        groups = {g.name for g in policy.eligible_groups.all()}
        if groups:
            group_sets.append(groups)
        req.four_eyes = req.four_eyes or policy.four_eyes
        req.approver_from_each_team = req.approver_from_each_team or policy.approver_from_each_team
        if policy.expires_after_s:
            expiries.append(policy.expires_after_s)
        for attestation in policy.attestations:
            if attestation.get("key") not in {a["key"] for a in req.attestations}:
                req.attestations.append(
                    {
                        "key": attestation["key"],
                        "label": attestation.get("label", attestation["key"]),
                    }
                )
    if group_sets:
        req.eligible_groups = sorted(set.intersection(*group_sets))
    req.expires_after_s = min(expiries) if expiries else None
    req.auto_start = bool(auto_start) and all(auto_start)
    return req, explain(req, bool(group_sets))


def explain(req: Requirements, names_groups: bool = True) -> str:
    if not req.policies:
        return "No approval policy applies: no approval is required."
    applied = "; ".join(f"{name} ({req.reasons[name]})" for name in req.policies)
    if req.preapproved_by:
        applied += ". Pre-approved by " + ", ".join(req.preapproved_by)
        if req.waived:
            applied += ", waiving the approvals of " + ", ".join(req.waived)
    if req.approvals == 0:
        needs = "no approval"
    else:
        if req.eligible_groups is None:
            who = "the approver role"
        elif req.eligible_groups:
            who = ", ".join(req.eligible_groups)
        else:
            who = "nobody: the policies' eligible groups do not overlap (an admin must change a policy)"
        needs = f"{req.approvals} approval{'s' if req.approvals > 1 else ''} from {who}"
        if req.approver_from_each_team:
            needs += ", one from each team"
        if req.expires_after_s:
            needs += f", each valid for {req.expires_after_s // 60} min"
    extras = []
    if req.attestations:
        extras.append("attestations: " + ", ".join(a["label"] for a in req.attestations))
    if req.gate_tiers:
        extras.append("a gate before stages touching tier " + "/".join(map(str, req.gate_tiers)))
    if req.auto_start:
        extras.append("an alert may start it without a human")
    return (
        f"Applies: {applied}. Strictest wins: {needs}"
        + ("; " + "; ".join(extras) if extras else "")
        + "."
    )
