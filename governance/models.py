"""Approval policies, approvals, roles and trigger rules (see the governance issue)."""
