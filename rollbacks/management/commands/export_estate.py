import sys
from pathlib import Path

import yaml
from django.core.management.base import BaseCommand

from rollbacks.estate import export_document


class Command(BaseCommand):
    help = "Write the whole estate as one YAML document (to a file, or stdout with -)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default="-")

    def handle(self, *args, path: str, **options):
        text = yaml.safe_dump(export_document(), sort_keys=False, allow_unicode=True)
        if path == "-":
            sys.stdout.write(text)
        else:
            Path(path).write_text(text)
            self.stdout.write(f"wrote {path}")
