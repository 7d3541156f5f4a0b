from django.core.management.base import BaseCommand

from governance.notifications import escalate


class Command(BaseCommand):
    help = (
        "Run one escalation round: overdue approvals, steps waiting for a human and failed "
        "rollbacks, each notified once by email and webhook (what beat runs every 30 s)."
    )

    def handle(self, *args, **options):
        counts = escalate()
        self.stdout.write(", ".join(f"{k}: {v}" for k, v in counts.items()))
