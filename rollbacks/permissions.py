"""Object permissions with django-guardian: who may see, operate and approve which object.

A team's auth group holds guardian object permissions on the team's objects:

- a system: ``view_system`` and ``operate_system``, given to its owning team's group when it
  is created and moved to the new team's group when it changes team;
- a process run: ``view_processrun`` and ``operate_processrun``, given to the group of every
  team whose system one of its forward actions touched (as the action is reported), and to
  the account that registered it;
- a rollback: ``view_rollback``, ``operate_rollback`` and ``approve_rollback``, given to the
  group of every team whose system one of its steps touches (as it is planned); its
  requester may view it.

Acting needs the role (the groups operator, approver, admin) AND the object permission
(``rollbacks/access.py``). An unexpired ``governance.IncidentGrant`` lends its team group's
object permissions; guardian has no expiry, so the grant is read at query time and a lapsed
grant lends nothing, with no clean-up to run. Grants are rows in guardian's direct
foreign-key tables (``rollbacks.models.*ObjectPermission``), so a visibility filter is an
indexed ``IN`` over integer keys and rows go with their object. See docs/permissions.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model, Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from rollbacks.models import ForwardAction, ProcessRun, Rollback, Step, System

SYSTEM_PERMS = ("view_system", "operate_system")
RUN_PERMS = ("view_processrun", "operate_processrun")
ROLLBACK_PERMS = ("view_rollback", "operate_rollback", "approve_rollback")


# Reading ------------------------------------------------------------------------------------


def lent_groups(user: Any) -> QuerySet:
    """Team groups an unexpired incident grant lends the user (a subquery, not run here)."""
    return Group.objects.filter(
        team__isnull=False,
        incident_grants__user=user,
        incident_grants__expires_at__gt=timezone.now(),
    )


def permitted(user: Any, perm: str, queryset: QuerySet) -> QuerySet:
    """The objects of ``queryset`` on which ``user`` holds the object permission ``perm`` (a
    codename): granted by guardian to the user or one of their groups, or to a team group an
    unexpired incident grant lends them. Superusers hold every permission. Lazy: it runs no
    query itself, so a list filtered with it costs no query per row."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return queryset.none()
    if user.is_superuser:
        return queryset
    model = queryset.model
    # Object permissions only: a model-wide permission (auth's "can view rollback") does
    # not open every object.
    own = get_objects_for_user(user, perm, model, accept_global_perms=False, with_superuser=False)
    lent = get_group_obj_perms_model(model).objects.filter(
        permission__content_type=ContentType.objects.get_for_model(model),
        permission__codename=perm,
        group__in=lent_groups(user),
    )
    return queryset.filter(Q(pk__in=own.values("pk")) | Q(pk__in=lent.values("content_object_id")))


def has_object_perm(user: Any, perm: str, obj: Model) -> bool:
    """Does ``user`` hold ``perm`` on ``obj`` (as ``permitted``)? One query."""
    return permitted(user, perm, type(obj).objects.filter(pk=obj.pk)).exists()


# Granting -----------------------------------------------------------------------------------


def _permissions(model: type[Model], codenames: Iterable[str]) -> list[Permission]:
    ct = ContentType.objects.get_for_model(model)
    return list(Permission.objects.filter(content_type=ct, codename__in=list(codenames)))


def grant(
    obj: Model,
    codenames: Iterable[str],
    *,
    groups: Iterable[Group | int] = (),
    users: Iterable[Any] = (),
) -> None:
    """Give ``codenames`` on ``obj`` to groups and users (what they already hold is kept)."""
    group_ids = {g if isinstance(g, int) else g.pk for g in groups if g is not None}
    user_ids = {u.pk for u in users if getattr(u, "is_authenticated", False)}
    if not group_ids and not user_ids:
        return
    perms = _permissions(type(obj), codenames)
    rows = [
        get_group_obj_perms_model(obj)(group_id=g, permission=p, content_object=obj)
        for g in group_ids
        for p in perms
    ]
    get_group_obj_perms_model(obj).objects.bulk_create(rows, ignore_conflicts=True)
    rows = [
        get_user_obj_perms_model(obj)(user_id=u, permission=p, content_object=obj)
        for u in user_ids
        for p in perms
    ]
    get_user_obj_perms_model(obj).objects.bulk_create(rows, ignore_conflicts=True)


def grant_system(system: System) -> None:
    """The system's owning team's group holds its permissions, and no other team's does."""
    model = get_group_obj_perms_model(System)
    model.objects.filter(content_object=system, group__team__isnull=False).exclude(
        group__team=system.team_id
    ).delete()
    grant(system, SYSTEM_PERMS, groups=[system.team.group_id])


def grant_run(run: ProcessRun, *, creator: Any = None, system: System | None = None) -> None:
    """On registration, the registering account; on each reported action, its system's team."""
    grant(
        run,
        RUN_PERMS,
        users=[creator] if creator is not None else [],
        groups=[system.team.group_id] if system is not None else [],
    )


def grant_rollback(rollback: Rollback) -> None:
    """When planned: every team whose system a step touches; the requester may view it."""
    groups = Step.objects.filter(rollback=rollback).values_list("system__team__group_id", flat=True)
    grant(rollback, ROLLBACK_PERMS, groups=set(groups))
    if rollback.requested_by is not None:
        grant(rollback, ("view_rollback",), users=[rollback.requested_by])


def _resync(model: type[Model], codenames: Iterable[str], wanted: set[tuple[int, int]]) -> None:
    """Make the team groups' permissions on these objects exactly ``wanted`` (object id,
    group id) pairs; groups that are not teams' (given by hand in the admin) are left alone."""
    ids = {obj_id for obj_id, _ in wanted}
    table = get_group_obj_perms_model(model)
    perms = _permissions(model, codenames)
    held = set(
        table.objects.filter(content_object_id__in=ids, group__team__isnull=False)
        .values_list("content_object_id", "group_id")
        .distinct()
    )
    stale = held - wanted
    if stale:
        q = Q()
        for obj_id, group_id in stale:
            q |= Q(content_object_id=obj_id, group_id=group_id)
        table.objects.filter(q).delete()
    table.objects.bulk_create(
        [table(content_object_id=o, group_id=g, permission=p) for o, g in wanted for p in perms],
        ignore_conflicts=True,
    )


def system_team_changed(system: System) -> None:
    """Move the system's permissions to its (new) team, and recompute the teams of every
    run and rollback that touches it: they are visible to the teams owning their systems."""
    grant_system(system)
    runs = ForwardAction.objects.filter(
        run__in=ForwardAction.objects.filter(system=system).values("run_id")
    ).values_list("run_id", "system__team__group_id")
    if wanted := set(runs):
        _resync(ProcessRun, RUN_PERMS, wanted)
    rollbacks = Step.objects.filter(
        rollback__in=Step.objects.filter(system=system).values("rollback_id")
    ).values_list("rollback_id", "system__team__group_id")
    if wanted := set(rollbacks):
        _resync(Rollback, ROLLBACK_PERMS, wanted)


def system_saved(sender, instance: System, created: bool, raw: bool = False, **kwargs) -> None:
    """``post_save`` of System, in the saving transaction: every path that creates a system
    or changes its team (the admin, the estate document, a shell) goes through ``save()``."""
    if raw:
        return
    if created:
        grant_system(instance)
    elif getattr(instance, "_loaded_team_id", None) != instance.team_id:
        system_team_changed(instance)
    instance._loaded_team_id = instance.team_id
