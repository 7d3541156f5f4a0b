from django.apps import AppConfig


class RollbacksConfig(AppConfig):
    name = "rollbacks"
    verbose_name = "Estate and rollbacks"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from rollbacks import permissions
        from rollbacks.models import System

        post_save.connect(permissions.system_saved, sender=System, dispatch_uid="system-perms")
