"""Give existing objects the guardian object permissions that new ones are given
(rollbacks/permissions.py, ledger/exports.py): a system to its team's group; a run to the
groups of the teams its actions touched and to its registrant; a rollback to the groups of
the teams its steps touch, and view to its requester; a ledger export to its creator. A
started rollback's ``started_by`` is taken from its requester (the nearest we know)."""

from django.db import migrations
from django.db.models import F

SYSTEM_PERMS = ("view_system", "operate_system")
RUN_PERMS = ("view_processrun", "operate_processrun")
ROLLBACK_PERMS = ("view_rollback", "operate_rollback", "approve_rollback")


def _create_permissions(apps):
    """As post_migrate would, so that the permissions exist before they are granted (a
    historical app config has no models module, and create_* skip such apps)."""
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes

    for label in ("rollbacks", "ledger"):
        config = apps.get_app_config(label)
        models_module = getattr(config, "models_module", None)
        config.models_module = models_module or True
        try:
            create_contenttypes(config, apps=apps, verbosity=0)
            create_permissions(config, apps=apps, verbosity=0)
        finally:
            config.models_module = models_module


def _perms(apps, app_label, model_name, codenames):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    ct = ContentType.objects.get(app_label=app_label, model=model_name)
    return list(Permission.objects.filter(content_type=ct, codename__in=codenames))


def _grant(table, pairs, perms, who="group_id"):
    table.objects.bulk_create(
        [table(content_object_id=o, permission=p, **{who: w}) for o, w in pairs for p in perms],
        ignore_conflicts=True,
        batch_size=1000,
    )


def forwards(apps, schema_editor):
    _create_permissions(apps)

    def get(name):
        return apps.get_model("rollbacks", name)

    systems = get("System").objects.values_list("pk", "team__group_id")
    system_perms = _perms(apps, "rollbacks", "system", SYSTEM_PERMS)
    _grant(get("SystemGroupObjectPermission"), systems, system_perms)

    run_perms = _perms(apps, "rollbacks", "processrun", RUN_PERMS)
    touched = get("ForwardAction").objects.values_list("run_id", "system__team__group_id")
    _grant(get("ProcessRunGroupObjectPermission"), set(touched), run_perms)
    creators = get("ProcessRun").objects.filter(created_by__isnull=False)
    _grant(
        get("ProcessRunUserObjectPermission"),
        creators.values_list("pk", "created_by_id"),
        run_perms,
        who="user_id",
    )

    rollback_perms = _perms(apps, "rollbacks", "rollback", ROLLBACK_PERMS)
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

    # Ledger exports: guardian's generic table (the ledger has no tables of its own for it).
    view_export = _perms(apps, "ledger", "export", ("view_export",))
    UserObjectPermission = apps.get_model("guardian", "UserObjectPermission")
    UserObjectPermission.objects.bulk_create(
        [
            UserObjectPermission(
                user_id=user_id,
                permission=perm,
                content_type_id=perm.content_type_id,
                object_pk=str(export_id),
            )
            for export_id, user_id in apps.get_model("ledger", "Export")
            .objects.filter(created_by_user__isnull=False)
            .values_list("pk", "created_by_user_id")
            for perm in view_export
        ],
        ignore_conflicts=True,
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("rollbacks", "0003_object_permissions"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        ("ledger", "0002_chains_checkpoints_exports"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
