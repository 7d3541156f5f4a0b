"""Create an API token for a service account and print it, once.

    manage.py create_service_token ci-orders --name orders-pipeline --create-user \\
        --role operator --team payments

The token alone goes to stdout (``TOKEN=$(manage.py create_service_token …)``); what was
done goes to stderr.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

import ledger.services as ledger
from rollbacks.models import Team
from rollbacks.tokens import token_create

# The role groups (governance/roles.py, created by its migration); named here because
# rollbacks must not import governance.
ROLES = ("operator", "approver", "auditor", "admin")
ACTOR = "manage.py create_service_token"


class Command(BaseCommand):
    help = "Create an API token for a (service) user; the token is printed once."

    def add_arguments(self, parser):
        parser.add_argument("username", help="The account the token acts as.")
        parser.add_argument("--name", required=True, help="What the token is for.")
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="Create the account (without a password) if it does not exist.",
        )
        parser.add_argument(
            "--role",
            action="append",
            default=[],
            help=f"Add the account to a role group: {', '.join(ROLES)}. Repeatable.",
        )
        parser.add_argument(
            "--team",
            action="extend",
            nargs="+",
            default=[],
            help="Add the account to a team (by slug). Repeatable.",
        )

    def handle(self, *args, username, name, create_user, role, team, **options):
        User = get_user_model()
        unknown_roles = sorted(set(role) - set(ROLES))
        if unknown_roles:
            raise CommandError(
                f"unknown role {', '.join(unknown_roles)}: use one of {', '.join(ROLES)}"
            )
        teams = {t.slug: t for t in Team.objects.filter(slug__in=team).select_related("group")}
        unknown_teams = sorted(set(team) - teams.keys())
        if unknown_teams:
            known = ", ".join(Team.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"unknown team {', '.join(unknown_teams)} (teams: {known})")
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None and not create_user:
            raise CommandError(f"no user {username!r}: pass --create-user to create it")
        if user is not None and not user.is_active:
            raise CommandError(f"user {username!r} is inactive: its tokens would not work")
        groups = [Group.objects.get_or_create(name=r)[0] for r in role]
        groups += [teams[slug].group for slug in team]

        with transaction.atomic():
            created = user is None
            if created:
                user = User(**{User.USERNAME_FIELD: username})
                user.set_unusable_password()
                user.save()
            added = [g for g in groups if not user.groups.filter(pk=g.pk).exists()]
            user.groups.add(*added)
            if created or added:
                ledger.record(
                    actor=ACTOR,
                    action="account.created" if created else "account.groups_added",
                    subject=user,
                    payload={"username": username, "groups_added": [g.name for g in added]},
                )
            try:
                token, raw = token_create(user=user, name=name, actor=ACTOR)
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from exc

        groups_now = ", ".join(user.groups.order_by("name").values_list("name", flat=True))
        self.stderr.write(
            f"{'Created user' if created else 'User'} {username} (groups: {groups_now or 'none'})."
        )
        self.stderr.write(
            f"Token {token.name!r} ({token.prefix}…) created. It is shown once, below: "
            "store it now, it cannot be recovered."
        )
        self.stdout.write(raw)
