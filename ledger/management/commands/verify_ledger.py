import json
from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandError

from ledger.verification import verification_run, verify


class Command(BaseCommand):
    help = (
        "Verify every entry's hash, every chain's links, the chain heads and the signed "
        "checkpoints. Prints OK, or the first bad entry and exits with status 1. Stores the "
        "result for the auditor's badge and ledgers the run (unless --no-store)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
        parser.add_argument(
            "--no-store", action="store_true", help="neither store the result nor ledger the run"
        )

    def handle(self, **options):
        if options["no_store"]:
            result = verify()
            data = result.as_dict()
            data["problems"] = [asdict(p) for p in result.problems]
        else:
            run = verification_run(actor="manage.py verify_ledger")
            data = {
                "ok": run.is_ok,
                "summary": run.summary(),
                "entries": run.entries,
                "chains": run.chains,
                "checkpoints": run.checkpoints,
                "problem_count": run.problem_count,
                "problems": run.problems,
                "warnings": run.warnings,
                "seconds": round(run.seconds, 3),
            }
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(data["summary"])
            if not data["ok"]:
                first = data["problems"][0]
                self.stdout.write(
                    f"first bad entry: chain={first['chain'] or '-'} seq={first['seq']} "
                    f"id={first['id']} kind={first['kind']}"
                )
            for warning in data["warnings"]:
                self.stderr.write(f"warning: {warning}")
        if not data["ok"]:
            raise CommandError("the ledger does not verify", returncode=1)
