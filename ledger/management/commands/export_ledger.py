import contextlib
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ledger import filters as ledger_filters
from ledger.exports import export_to_file


class Command(BaseCommand):
    help = (
        "Export the ledger (or the entries matching the filters) as JSON Lines or CSV, with "
        "its signed manifest; the export is ledgered. Verify with "
        "`python -m ledger.verify_export FILE MANIFEST`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--out", required=True, help="the file to write ('-' for stdout)")
        parser.add_argument(
            "--manifest", help="where to write the manifest (default: OUT.manifest.json)"
        )
        for name in ledger_filters.FILTER_NAMES:
            parser.add_argument(f"--{name}", dest=f"filter_{name}", metavar=name.upper())

    def handle(self, **options):
        params = {
            name: options[f"filter_{name}"]
            for name in ledger_filters.FILTER_NAMES
            if options[f"filter_{name}"] not in (None, "")
        }
        filters, errors = ledger_filters.parse(params)
        if errors:
            raise CommandError(
                "; ".join(f"--{name}: {' '.join(messages)}" for name, messages in errors.items())
            )
        out = options["out"]
        manifest = options["manifest"] or (None if out == "-" else out + ".manifest.json")
        if manifest is None:
            raise CommandError("--manifest is required when writing the export to stdout")
        with contextlib.ExitStack() as stack:
            target = sys.stdout.buffer if out == "-" else stack.enter_context(Path(out).open("wb"))
            manifest_out = stack.enter_context(Path(manifest).open("w", encoding="utf-8"))
            export = export_to_file(
                actor="manage.py export_ledger",
                format=options["format"],
                filters=filters,
                out=target,
                manifest_out=manifest_out,
            )
        signed = export.manifest["manifest"]
        self.stderr.write(
            f"Exported {signed['count']} entries ({signed['bytes']} bytes, SHA-256 "
            f"{signed['sha256']}) to {out}; manifest in {manifest}."
        )
