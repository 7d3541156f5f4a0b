"""The demo's approval policies, so that `make run` shows approvals, and who may break the
glass. Created once: an admin's later edits in Django admin are kept (and ledgered there)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

import ledger.services as ledger
from governance.models import ApprovalPolicy

POLICIES = [
    {
        "name": "critical",
        "description": "Rollbacks touching a tier-1 system: two approvers, a data-protection "
        "attestation, approvals valid for 30 minutes.",
        "tiers": [1],
        "approvals_required": 2,
        "groups": ["approver"],
        "four_eyes": True,
        "expires_after_s": 1800,
        "attestations": [{"key": "pii", "label": "Personal data impact checked"}],
    },
    {
        "name": "low-tier-auto",
        "description": "Tier-3 systems alone need no approval; an alert may start their rollback.",
        "tiers": [3],
        "approvals_required": 0,
        "auto_start": True,
    },
]
BREAK_GLASS_USERS = ["dave"]


def ensure(*, actor: str) -> str:
    """Create the demo policies that do not exist yet; grant break-glass to BREAK_GLASS_USERS."""
    created = []
    with transaction.atomic():
        for spec in POLICIES:
            spec = dict(spec)
            groups = [Group.objects.get_or_create(name=g)[0] for g in spec.pop("groups", [])]
            policy, is_new = ApprovalPolicy.objects.get_or_create(name=spec["name"], defaults=spec)
            if not is_new:
                continue
            policy.eligible_groups.set(groups)
            created.append(policy.name)
            ledger.record(
                actor=actor,
                action="policy.created",
                subject=policy,
                reason="demo policy",
                payload=spec | {"groups": [g.name for g in groups]},
            )
        permission = Permission.objects.get(
            content_type__app_label="governance", codename="use_break_glass"
        )
        for user in get_user_model().objects.filter(username__in=BREAK_GLASS_USERS):
            user.user_permissions.add(permission)
    names = ", ".join(p["name"] for p in POLICIES)
    return (
        f"policies: {names} ({len(created)} created); break-glass: {', '.join(BREAK_GLASS_USERS)}"
    )
