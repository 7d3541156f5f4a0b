"""The four roles are auth groups, created by a migration."""

OPERATOR = "operator"
APPROVER = "approver"
AUDITOR = "auditor"
ADMIN = "admin"
ROLES = (OPERATOR, APPROVER, AUDITOR, ADMIN)
