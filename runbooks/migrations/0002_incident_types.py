"""A small starting taxonomy of incident types (runbooks/taxonomy.py)."""

from django.db import migrations

from runbooks.taxonomy import INCIDENT_TYPES


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
