from django.core.management.base import BaseCommand

from ledger.checkpoints import checkpoint_take


class Command(BaseCommand):
    help = "Take a signed checkpoint of every chain's head (nothing if no chain moved)."

    def handle(self, **options):
        checkpoint = checkpoint_take()
        if checkpoint is None:
            self.stdout.write("No chain moved since the last checkpoint: none taken.")
        else:
            self.stdout.write(
                f"Checkpoint {checkpoint.seq}: {checkpoint.entry_count} entries in "
                f"{checkpoint.chain_count} chains, hash {checkpoint.hash}"
            )
