from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from demo import seed
from rollbacks.estate import import_document, parse
from rollbacks.models import System

DEMO_PASSWORD = "unwind-demo"  # noqa: S105 - demo logins, listed in the README
# username -> (role, teams); mallory is the outsider: no role, no team.
DEMO_USERS = {
    "alice": ("operator", ["payments", "platform"]),
    "bob": ("approver", ["payments", "platform"]),
    "erin": ("approver", ["payments", "platform"]),
    "carol": ("auditor", []),
    "dave": ("admin", ["payments", "platform"]),
    "mallory": (None, []),
}


class Command(BaseCommand):
    help = (
        "Load what is missing of the demo: the estate (demo/estate.yaml through the estate "
        "import, its targets at DEMO_TARGETS_URL: systems, map, contracts, approval policies, "
        "trigger rules) and the policy pre-approving a runbook, the demo runbooks, the demo "
        "users and the failed demo run. What is there already is kept as an admin left it; "
        "--reset imports the demo estate again over it."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset",
            action="store_true",
            help="import demo/estate.yaml again, undoing admins' edits of the demo estate",
        )

    def handle(self, *args, **options):
        is_loaded = System.objects.exists() and not options["reset"]
        text = seed.estate_text()  # its targets at DEMO_TARGETS_URL
        if is_loaded:
            # An admin's edits (a policy, a contract) survive a restart of `make run`.
            self.stdout.write(
                "estate: already loaded, kept as it is (seed_demo --reset reloads it)"
            )
        else:
            result = import_document(parse(text), actor="command:seed_demo")
            self.stdout.write(f"estate: {len(result.changes)} change(s)")
        self.stdout.write(seed.runbooks(actor="command:seed_demo"))
        if not is_loaded:  # the policy pre-approving a runbook names its published version
            doc = seed.with_runbook_policies(parse(text))
            result = import_document(doc, actor="command:seed_demo")
            self.stdout.write(f"runbook policies: {len(result.changes)} change(s)")
        User = get_user_model()
        with transaction.atomic():
            for username, (role, teams) in DEMO_USERS.items():
                user, created = User.objects.get_or_create(username=username)
                if not created:
                    continue  # its groups, password and flags are an admin's now
                user.set_password(DEMO_PASSWORD)
                user.email = f"{username}@example.com"
                user.is_staff = user.is_superuser = role == "admin"
                user.save()
                groups = [Group.objects.get(name=f"team:{t}") for t in teams]
                if role:
                    groups.append(Group.objects.get_or_create(name=role)[0])
                user.groups.set(groups)
        self.stdout.write(f"users: {', '.join(DEMO_USERS)} (password {DEMO_PASSWORD!r})")
        self.stdout.write(seed.prepare_orders_db())
        self.stdout.write(seed.failed_run(actor="command:seed_demo"))
