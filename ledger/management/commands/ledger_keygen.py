from django.core.management.base import BaseCommand

from ledger import signing


class Command(BaseCommand):
    help = "Print a new Ed25519 signing key for LEDGER_SIGNING_KEY, and its public half."

    def handle(self, **options):
        private = signing.generate_key_b64()
        public = signing.public_key_b64(signing._from_b64(private, "the new key"))
        self.stdout.write(f"LEDGER_SIGNING_KEY={private}")
        self.stdout.write(f"# public key: {public} (key id {signing.key_id(public)})")
