from django.urls import path

from drills import views

urlpatterns = [
    path("rollbacks/<int:pk>/faults", views.fault_add, name="drill-fault-add"),
    path(
        "rollbacks/<int:pk>/faults/<int:fault_id>/remove",
        views.fault_remove,
        name="drill-fault-remove",
    ),
]
