from django.urls import path

from reconcile import views

urlpatterns = [
    path("rollbacks/<int:pk>/", views.panel, name="reconcile-panel"),
    path("rollbacks/<int:pk>/run", views.rerun, name="reconcile-run"),
    path("rollbacks/<int:pk>/follow-up", views.followup, name="reconcile-followup"),
    path(
        "rollbacks/<int:pk>/findings/<int:finding_id>/dismiss",
        views.dismiss,
        name="reconcile-dismiss",
    ),
]
