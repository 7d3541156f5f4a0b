from django.core.management.base import BaseCommand

from governance.alerts import alerts_match_stale


class Command(BaseCommand):
    help = (
        "Match firing alerts that were stored but never matched against the trigger rules "
        "(their worker message was lost); what beat runs every minute."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=120.0,
            help="Only alerts received at least this many seconds ago (default 120).",
        )

    def handle(self, *args, older_than, **options):
        from datetime import timedelta

        outcomes = alerts_match_stale(older_than=timedelta(seconds=older_than))
        for alert_id, outcome in outcomes.items():
            self.stdout.write(f"alert #{alert_id}: {outcome}")
        self.stdout.write(f"matched {len(outcomes)} alert(s)")
