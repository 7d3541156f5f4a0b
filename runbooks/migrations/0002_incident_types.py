"""A small starting taxonomy of incident types; admins add or change them in Django admin."""

from django.db import migrations

INCIDENT_TYPES = [
    ("bad-deploy", "Bad deploy of one service", "service", "bad_deploy",
     "A release broke a service: undo what it wrote, in its stores and downstream."),
    ("bad-data-migration", "Bad data migration", "cross_team", "data_migration",
     "A migration wrote wrong or partial data across systems of several teams."),
    ("flag-misfire", "Feature flag misfire", "single_system", "config_change",
     "A flag or configuration change exposed something too early: switch it back, undo its effects."),
    ("third-party-failure", "Third-party failure", "cross_team", "third_party",
     "A provider failed half-way: undo our side of what it half did."),
]


def seed(apps, schema_editor):
    IncidentType = apps.get_model("runbooks", "IncidentType")
    for slug, name, scope, cause, description in INCIDENT_TYPES:
        IncidentType.objects.get_or_create(
            slug=slug,
            defaults={"name": name, "scope": scope, "cause": cause, "description": description},
        )


def unseed(apps, schema_editor):
    apps.get_model("runbooks", "IncidentType").objects.filter(
        slug__in=[t[0] for t in INCIDENT_TYPES], runbooks__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("runbooks", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
