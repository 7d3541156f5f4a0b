"""Django's ``flush``, let through the ledger's append-only triggers.

Emptying the whole database (what ``flush`` and the test runner's teardown of
``transaction=True`` tests do) is the one thing those triggers allow: on PostgreSQL only the
TRUNCATE triggers are ignored, for this command's statements (ledger/db.py).
"""

from django.core.management.commands import flush

from ledger.db import allow_flush


class Command(flush.Command):
    def handle(self, **options):
        with allow_flush(options["database"]):
            return super().handle(**options)
