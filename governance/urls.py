from django.urls import path

from governance import views

urlpatterns = [
    path("approvals/", views.approvals_pending, name="approvals"),
    path("approvals/count", views.approvals_count, name="approvals-count"),
    path("rollbacks/<int:pk>/approve", views.rollback_approve, name="rollback-approve"),
    path("rollbacks/<int:pk>/reject", views.rollback_reject, name="rollback-reject"),
    path(
        "rollbacks/<int:pk>/approvals/<int:approval_id>/revoke",
        views.approval_revoke,
        name="approval-revoke",
    ),
    path("rollbacks/<int:pk>/break-glass", views.rollback_break_glass, name="rollback-break-glass"),
    path(
        "rollbacks/<int:pk>/break-glass/review",
        views.break_glass_review,
        name="break-glass-review",
    ),
    path("rollbacks/<int:pk>/stages/<int:index>/open-gate", views.gate_open, name="gate-open"),
]
