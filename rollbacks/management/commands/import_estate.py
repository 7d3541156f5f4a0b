from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from rollbacks.estate import EstateError, import_document, parse


class Command(BaseCommand):
    help = "Import an estate document (YAML or JSON): all or nothing, ledgered with its SHA-256."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")

    def handle(self, *args, path: Path, dry_run: bool, **options):
        try:
            text = path.read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        try:
            result = import_document(parse(text), actor="command:import_estate", dry_run=dry_run)
        except EstateError as exc:
            for p, message in exc.errors:
                self.stderr.write(f"{p or '(document)'}: {message}")
            raise CommandError(f"{path}: {len(exc.errors)} error(s); nothing was changed") from None
        for change in result.changes:
            self.stdout.write(change)
        verb = "would change" if dry_run else "changed"
        self.stdout.write(f"{verb} {len(result.changes)} thing(s); sha256 {result.sha256}")
