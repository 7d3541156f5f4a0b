from django.apps import AppConfig


class ReconcileConfig(AppConfig):
    name = "reconcile"
    verbose_name = "Reconciliation"

    def ready(self) -> None:
        from reconcile import services
        from rollbacks.engine import rollback_ended

        rollback_ended.connect(services.on_rollback_ended, dispatch_uid="reconcile.rollback_ended")
