"""Give existing objects the guardian object permissions that rollbacks/permissions.py gives
new ones: a system to its team's group; a run to the groups of the teams its actions touched
and to its registrant; a rollback to the groups of the teams its steps touch, and view to
its requester. Its ``started_by`` is taken from its requester (the nearest we know)."""

from django.db import migrations
from django.db.models import F

SYSTEM_PERMS = ("view_system", "operate_system")
RUN_PERMS = ("view_processrun", "operate_processrun")
ROLLBACK_PERMS = ("view_rollback", "operate_rollback", "approve_rollback")


def _perms(apps, model_name, codenames):
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes

    config = apps.get_app_config("rollbacks")
    config.models_module = True  # as post_migrate would: the permissions exist before we grant them
    create_contenttypes(config, apps=apps, verbosity=0)
    create_permissions(config, apps=apps, verbosity=0)
    config.models_module = None
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    ct = ContentType.objects.get(app_label="rollbacks", model=model_name)
    return list(Permission.objects.filter(content_type=ct, codename__in=codenames))


def _grant(table, pairs, perms, who="group_id"):
    table.objects.bulk_create(
        [table(content_object_id=o, permission=p, **{who: w}) for o, w in pairs for p in perms],
        ignore_conflicts=True,
        batch_size=1000,
    )


def forwards(apps, schema_editor):
    get = lambda name: apps.get_model("rollbacks", name)  # noqa: E731
    systems = get("System").objects.values_list("pk", "team__group_id")
    _grant(get("SystemGroupObjectPermission"), systems, _perms(apps, "system", SYSTEM_PERMS))

    run_perms = _perms(apps, "processrun", RUN_PERMS)
    touched = get("ForwardAction").objects.values_list("run_id", "system__team__group_id")
    _grant(get("ProcessRunGroupObjectPermission"), set(touched), run_perms)
    creators = get("ProcessRun").objects.filter(created_by__isnull=False)
    _grant(
        get("ProcessRunUserObjectPermission"),
        creators.values_list("pk", "created_by_id"),
        run_perms,
        who="user_id",
    )

    rollback_perms = _perms(apps, "rollback", ROLLBACK_PERMS)
    spanned = get("Step").objects.values_list("rollback_id", "system__team__group_id")
    _grant(get("RollbackGroupObjectPermission"), set(spanned), rollback_perms)
    requested = get("Rollback").objects.filter(requested_by__isnull=False)
    _grant(
        get("RollbackUserObjectPermission"),
        requested.values_list("pk", "requested_by_id"),
        [p for p in rollback_perms if p.codename == "view_rollback"],
        who="user_id",
    )
    requested.filter(started_at__isnull=False, started_by__isnull=True).update(
        started_by_id=F("requested_by_id")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("rollbacks", "0003_object_permissions"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
