"""What the JSON API (``rollbacks/api.py``) calls to approve or reject: found there by name
at call time, because imports flow governance → rollbacks. The services check everything
(role, teams, eligible groups, four-eyes for service accounts too) and ledger refusals."""

from __future__ import annotations

from typing import Any

from governance import services
from governance.models import Approval
from rollbacks.models import Rollback


def approve(
    rollback: Rollback, actor: Any, comment: str, attestations: dict[str, str] | None = None
) -> Approval:
    return services.rollback_approve(
        rollback=rollback, approver=actor, comment=comment, attestations=attestations or {}
    )


def reject(rollback: Rollback, actor: Any, comment: str) -> Approval:
    return services.rollback_reject(rollback=rollback, approver=actor, comment=comment)
