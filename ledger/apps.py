from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in
        from django.db.backends.signals import connection_created

        from ledger import access, db

        connection_created.connect(db.register_sqlite_functions, dispatch_uid="ledger-sqlite")
        user_logged_in.connect(access.remember_auditor, dispatch_uid="ledger-nav")
