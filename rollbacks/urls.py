from django.urls import path, register_converter

from rollbacks import views


class RollbackAction:
    regex = "start|pause|resume|abort"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class StepAction(RollbackAction):
    regex = "retry|skip|resolve"


register_converter(RollbackAction, "rollback_action")
register_converter(StepAction, "step_action")

urlpatterns = [
    path("systems/", views.system_list, name="systems"),
    path("runs/", views.run_list, name="runs"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/plan", views.run_plan, name="run-plan"),
    path("rollbacks/", views.rollback_list, name="rollbacks"),
    path("rollbacks/<int:pk>/", views.rollback_detail, name="rollback"),
    path("rollbacks/<int:pk>/panels/<slug:key>", views.rollback_panel, name="rollback-panel"),
    path(
        "rollbacks/<int:pk>/<rollback_action:action>",
        views.rollback_action,
        name="rollback-action",
    ),
    path(
        "rollbacks/<int:pk>/steps/<int:step_id>/<step_action:action>",
        views.step_action,
        name="step-action",
    ),
]
