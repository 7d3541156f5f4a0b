"""Who may do what to a rollback's governance, as ``(allowed, why not)`` for pages and hooks.

The services check again and refuse (ledgered) whatever these allow by mistake: these only
decide which forms a page shows and what it says instead.
"""

from __future__ import annotations

from typing import Any

from governance import services
from governance.gate import requirements
from governance.models import BreakGlass
from governance.policies import Requirements
from rollbacks import access
from rollbacks.models import Rollback

REVIEWS_NEEDED = services.REVIEWS_NEEDED
REVIEWER_ROLES = ("approver", "admin", "auditor")


def can_approve(rollback: Rollback, user: Any, req: Requirements | None = None) -> tuple[bool, str]:
    """May the user approve or reject (or open a gate of) this rollback under its policy?"""
    if not getattr(user, "is_authenticated", False):
        return False, "log in to approve"
    if rollback.requested_by_id is not None and rollback.requested_by_id == user.pk:
        # Said first: whatever else is true of the requester, this is why.
        return False, "four-eyes: the requester never approves their own rollback"
    problem = services._eligibility_problem(
        rollback, user, req if req is not None else requirements(rollback)
    )
    return not problem, problem


def can_break_glass(rollback: Rollback, user: Any) -> tuple[bool, str]:
    """The break-glass right and the operator role in the rollback's teams (as the service)."""
    if not services.can_break_glass(user):
        return False, "break-glass needs the break-glass right"
    if not access.can_operate(user, rollback):
        return False, "break-glass needs the operator role in the rollback's teams"
    return True, ""


def can_review_break_glass(break_glass: BreakGlass, user: Any) -> tuple[bool, str]:
    """An approver, auditor or admin other than who broke the glass, once, until two did.

    Reads ``break_glass.reviews.all()`` (prefetch it) rather than querying again.
    """
    reviews = list(break_glass.reviews.all())
    if len(reviews) >= REVIEWS_NEEDED:
        return False, "it has the two reviews it needs"
    if user.pk == break_glass.used_by_id:
        return False, "who broke the glass does not review it"
    if any(review.reviewer_id == user.pk for review in reviews):
        return False, "you have reviewed it"
    if not access.has_role(user, *REVIEWER_ROLES):
        return False, "a break-glass is reviewed by an approver, auditor or admin"
    return True, ""
