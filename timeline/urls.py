from django.urls import path

from timeline import views

urlpatterns = [
    path("rollbacks/<int:pk>/timeline", views.timeline_fragment, name="rollback-timeline"),
    path(
        "rollbacks/<int:pk>/timeline/stream", views.timeline_stream, name="rollback-timeline-stream"
    ),
]
