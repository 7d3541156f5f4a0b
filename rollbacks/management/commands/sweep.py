from django.core.management.base import BaseCommand

from rollbacks.engine import sweep


class Command(BaseCommand):
    help = "Run the sweeper once: expired leases, lost step messages, unsent outbox rows."

    def handle(self, *args, **options):
        counts = sweep()
        self.stdout.write(", ".join(f"{k}: {v}" for k, v in counts.items()))
