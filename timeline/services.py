"""A rollback's timeline: its ledger entries, external events, the alerts that concern it
and its process run's events, joined by rollback, run and trace id, in one query.

Every item has a place ``(seen, kind, id)``: ``seen`` is when Unwind recorded it (the
ledger's ``at``, an event's or alert's ``received_at``, an action's ``reported_at``), so a
late report never lands behind a cursor a page already holds. The cursor is that triple;
"what is new after it" is one ``UNION ALL`` whose branches each read an index on
``(key, seen, id)`` (docs/timeline.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Concat

from governance.models import Alert
from ledger.models import Entry
from rollbacks.models import ForwardAction, ProcessRun, Rollback, Step
from timeline.models import Event

User = get_user_model()
PAGE = 50  # items per page of the timeline (newest first); older ones are a link away
COLUMNS = (
    "t_seen",
    "t_kind",
    "t_id",
    "t_system",
    "t_title",
    "t_detail",
    "t_actor",
    "t_trace",
    "t_occurred",
    "t_sub",
)
KIND_LABELS = {
    "alert": "alert",
    "event": "event",
    "ledger": "ledger",
    "run": "process run",
    "run_action": "forward action",
    "run_failed": "process run",
}


class CursorError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Cursor:
    """A place on the timeline: ``<microseconds since the epoch>.<kind>.<id>``."""

    seen: datetime
    kind: str
    id: int

    def __str__(self) -> str:
        micros = round(self.seen.timestamp() * 1_000_000)
        return f"{micros}.{self.kind}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        try:
            micros, kind, pk = text.split(".")
            seen = datetime.fromtimestamp(int(micros) / 1_000_000, tz=UTC)
            if kind not in KIND_LABELS:
                raise ValueError(kind)
            return cls(seen, kind, int(pk))
        except (ValueError, OverflowError, OSError) as exc:
            raise CursorError(
                f"{text[:60]!r} is not a timeline cursor (<microseconds>.<kind>.<id>)"
            ) from exc


@dataclass(frozen=True)
class Scope:
    """What joins an item to a rollback: the rollback, its run, their trace ids; and the
    system the reader filters by ("" for all)."""

    rollback_id: int
    run_id: int
    trace_ids: tuple[str, ...]
    system: str = ""

    @classmethod
    def of(cls, rollback: Rollback, system: str = "") -> Scope:
        traces = {rollback.trace_id, rollback.run.trace_id} - {""}
        return cls(rollback.pk, rollback.run_id, tuple(sorted(traces)), system)


@dataclass
class Item:
    seen: datetime
    kind: str
    id: int
    system: str
    title: str
    detail: str
    actor: str
    trace_id: str
    occurred: datetime
    sub: str
    cursor: Cursor = field(init=False)

    def __post_init__(self) -> None:
        self.cursor = Cursor(self.seen, self.kind, self.id)

    @property
    def dom_id(self) -> str:
        return f"tl-{self.kind}-{self.id}"

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]

    @property
    def occurred_apart(self) -> bool:
        """The source says it happened more than a second before Unwind heard of it."""
        return abs((self.seen - self.occurred).total_seconds()) >= 1


def _text(value) -> Value:
    return Value(value, output_field=CharField())


def _place(kind: str, seen: str, after: Cursor | None, before: Cursor | None) -> Q:
    """``(seen, kind, id) > after`` and ``< before`` for a branch whose kind is constant."""
    q = Q()
    if after is not None:
        if kind > after.kind:
            q &= Q(**{f"{seen}__gte": after.seen})
        elif kind == after.kind:
            q &= Q(**{f"{seen}__gt": after.seen}) | Q(**{seen: after.seen, "id__gt": after.id})
        else:
            q &= Q(**{f"{seen}__gt": after.seen})
    if before is not None:
        if kind < before.kind:
            q &= Q(**{f"{seen}__lte": before.seen})
        elif kind == before.kind:
            q &= Q(**{f"{seen}__lt": before.seen}) | Q(**{seen: before.seen, "id__lt": before.id})
        else:
            q &= Q(**{f"{seen}__lt": before.seen})
    return q


def _columns(qs: QuerySet, **columns) -> QuerySet:
    return qs.annotate(**columns).values(*COLUMNS).order_by()


def _ledger(scope: Scope, after: Cursor | None, before: Cursor | None) -> QuerySet:
    joined = Q(rollback_id=scope.rollback_id)
    if scope.trace_ids:
        # Outside any rollback's chain, only entries about one of this rollback's systems:
        # anyone may send a request under another team's trace id (traceparent).
        systems = _rollback_systems(scope).annotate(sid=Cast("system_id", CharField()))
        joined |= Q(
            rollback_id__isnull=True,
            trace_id__in=scope.trace_ids,
            subject_type="system",
            subject_id__in=systems.values("sid"),
        )
    entries = Entry.objects.filter(joined, _place("ledger", "at", after, before))
    if scope.system:
        steps = Step.objects.filter(rollback_id=scope.rollback_id, system__slug=scope.system)
        entries = entries.filter(
            subject_type="step",
            subject_id__in=steps.annotate(sid=Cast("id", CharField())).values("sid"),
        )
    step_system = Step.objects.filter(pk=Cast(OuterRef("subject_id"), BigIntegerField())).values(
        "system__slug"
    )[:1]
    return _columns(
        entries,
        t_seen=F("at"),
        t_kind=_text("ledger"),
        t_id=F("id"),
        t_system=Case(
            When(subject_type="step", then=Subquery(step_system)),
            default=_text(""),
            output_field=CharField(),
        ),
        t_title=Concat(
            "action",
            _text(" · "),
            "subject_type",
            _text(" "),
            "subject_id",
            output_field=CharField(),
        ),
        t_detail=F("reason"),
        t_actor=F("actor"),
        t_trace=F("trace_id"),
        t_occurred=F("at"),
        t_sub=F("outcome"),
    )


def _rollback_systems(scope: Scope) -> QuerySet:
    return Step.objects.filter(rollback_id=scope.rollback_id).values("system_id")


def _by_trace_of_this_rollback(scope: Scope) -> Q:
    """What a trace id alone may join: a trace id is any poster's to choose (another team's
    run may use the same one), so an item joined by it alone must concern one of the
    rollback's own systems; an event without a system must come from an account that sees
    the rollback (a member of one of its teams, or a superuser) or from Unwind itself."""
    team_groups = Step.objects.filter(rollback_id=scope.rollback_id).values(
        "system__team__group_id"
    )
    members = User.groups.through.objects.filter(group_id__in=team_groups).values("user_id")
    return Q(trace_id__in=scope.trace_ids) & (
        Q(system_id__in=_rollback_systems(scope))
        | Q(system__isnull=True)
        & (
            Q(created_by__isnull=True)
            | Q(created_by__is_superuser=True)
            | Q(created_by_id__in=members)
        )
    )


def _events(scope: Scope, after: Cursor | None, before: Cursor | None) -> QuerySet:
    joined = Q(rollback_id=scope.rollback_id) | Q(run_id=scope.run_id)
    if scope.trace_ids:
        joined |= _by_trace_of_this_rollback(scope)
    events = Event.objects.filter(joined, _place("event", "received_at", after, before))
    if scope.system:
        events = events.filter(system__slug=scope.system)
    return _columns(
        events,
        t_seen=F("received_at"),
        t_kind=_text("event"),
        t_id=F("id"),
        t_system=Coalesce(F("system__slug"), _text("")),
        t_title=F("title"),
        t_detail=Concat(_text("from "), "source", output_field=CharField()),
        t_actor=_text(""),
        t_trace=F("trace_id"),
        t_occurred=F("occurred_at"),
        t_sub=F("kind"),
    )


def _alerts(scope: Scope, after: Cursor | None, before: Cursor | None) -> QuerySet:
    alerts = Alert.objects.filter(
        _place("alert", "received_at", after, before), rollback_id=scope.rollback_id
    )
    system = KeyTextTransform("system", "labels")
    if scope.system:
        alerts = alerts.annotate(label_system=system).filter(label_system=scope.system)
    return _columns(
        alerts,
        t_seen=F("received_at"),
        t_kind=_text("alert"),
        t_id=F("id"),
        t_system=Coalesce(system, _text(""), output_field=CharField()),
        t_title=Coalesce(
            KeyTextTransform("alertname", "labels"), _text("alert"), output_field=CharField()
        ),
        t_detail=F("outcome"),
        t_actor=F("receiver"),
        t_trace=_text(""),
        t_occurred=F("starts_at"),
        t_sub=F("status"),
    )


def _run_actions(scope: Scope, after: Cursor | None, before: Cursor | None) -> QuerySet:
    actions = ForwardAction.objects.filter(
        Q(run_id=scope.run_id), _place("run_action", "reported_at", after, before)
    )
    if scope.system:
        actions = actions.filter(system__slug=scope.system)
    return _columns(
        actions,
        t_seen=F("reported_at"),
        t_kind=_text("run_action"),
        t_id=F("id"),
        t_system=F("system__slug"),
        t_title=F("action_type"),
        t_detail=F("idempotency_key"),
        t_actor=_text(""),
        t_trace=F("trace_id"),
        t_occurred=F("reported_at"),
        t_sub=F("status"),
    )


def _run(scope: Scope, after: Cursor | None, before: Cursor | None) -> list[QuerySet]:
    """The run's registration and, once reported, its failure (no system of their own)."""
    if scope.system:
        return []
    runs = ProcessRun.objects.filter(pk=scope.run_id)
    registered = _columns(
        runs.filter(_place("run", "created_at", after, before)),
        t_seen=F("created_at"),
        t_kind=_text("run"),
        t_id=F("id"),
        t_system=_text(""),
        t_title=Concat(_text("run registered: "), "process", output_field=CharField()),
        t_detail=F("external_id"),
        t_actor=_text(""),
        t_trace=F("trace_id"),
        t_occurred=F("created_at"),
        t_sub=_text("registered"),
    )
    failed = _columns(
        runs.filter(Q(failed_at__isnull=False), _place("run_failed", "failed_at", after, before)),
        t_seen=F("failed_at"),
        t_kind=_text("run_failed"),
        t_id=F("id"),
        t_system=_text(""),
        t_title=_text("run failed"),
        t_detail=F("failure_reason"),
        t_actor=_text(""),
        t_trace=F("trace_id"),
        t_occurred=F("failed_at"),
        t_sub=_text("failed"),
    )
    return [registered, failed]


def _union(
    scope: Scope, after: Cursor | None, before: Cursor | None, *, newest: bool, limit: int
) -> QuerySet:
    """One ``UNION ALL`` of the branches, ordered by place and cut at ``limit``. Where the
    database allows it (PostgreSQL), each branch is ordered and cut too, so that each reads
    at most ``limit`` entries of its index instead of every row of the rollback."""
    branches = [
        _ledger(scope, after, before),
        _events(scope, after, before),
        _alerts(scope, after, before),
        _run_actions(scope, after, before),
        *_run(scope, after, before),
    ]
    order = ("-t_seen", "-t_kind", "-t_id") if newest else ("t_seen", "t_kind", "t_id")
    if connection.features.supports_slicing_ordering_in_compound:
        branches = [branch.order_by(order[0], order[2])[:limit] for branch in branches]
    first, *rest = branches
    return first.union(*rest, all=True).order_by(*order)[:limit]


def _items(rows: Iterable[dict]) -> list[Item]:
    return [
        Item(
            seen=row["t_seen"],
            kind=row["t_kind"],
            id=row["t_id"],
            system=row["t_system"] or "",
            title=row["t_title"] or "",
            detail=row["t_detail"] or "",
            actor=row["t_actor"] or "",
            trace_id=row["t_trace"] or "",
            occurred=row["t_occurred"],
            sub=row["t_sub"] or "",
        )
        for row in rows
    ]


# Building and compiling the six-branch union through the ORM costs more than running it
# (about 0.5 ms with the indexes). Its SQL depends only on the query's shape, so on
# PostgreSQL it is compiled once per shape with marker values, and each marker's place in
# the parameters is remembered; a call then only fills in its own values.
_MARK_ROLLBACK, _MARK_RUN, _MARK_ID_AFTER, _MARK_ID_BEFORE = -910_001, -910_002, -910_003, -910_004
_MARK_AFTER = datetime(1901, 1, 1, 0, 0, 1, tzinfo=UTC)
_MARK_BEFORE = datetime(1901, 1, 1, 0, 0, 2, tzinfo=UTC)
_compiled: dict[tuple, tuple[str, list]] = {}


def _shape(scope: Scope, after: Cursor | None, before: Cursor | None, newest: bool, limit: int):
    return (
        connection.alias,
        len(scope.trace_ids),
        bool(scope.system),
        after.kind if after else None,
        before.kind if before else None,
        newest,
        limit,
    )


def _compile(scope: Scope, after: Cursor | None, before: Cursor | None, newest: bool, limit: int):
    marks = {
        _MARK_ROLLBACK: "rollback",
        _MARK_RUN: "run",
        _MARK_ID_AFTER: "after_id",
        _MARK_ID_BEFORE: "before_id",
        _MARK_AFTER: "after_seen",
        _MARK_BEFORE: "before_seen",
    }
    traces = tuple(f"~trace{i}~" for i in range(len(scope.trace_ids)))
    marks.update({t: f"trace{i}" for i, t in enumerate(traces)})
    system = "~system~" if scope.system else ""
    if system:
        marks[system] = "system"
    marked = Scope(_MARK_ROLLBACK, _MARK_RUN, traces, system)
    m_after = Cursor(_MARK_AFTER, after.kind, _MARK_ID_AFTER) if after else None
    m_before = Cursor(_MARK_BEFORE, before.kind, _MARK_ID_BEFORE) if before else None
    sql, params = _union(
        marked, m_after, m_before, newest=newest, limit=limit
    ).query.sql_with_params()
    roles = []
    for param in params:
        role = marks.get(param) if isinstance(param, int | str | datetime) else None
        roles.append(("role", role) if role else ("const", param))
    return sql, roles


def _rows(scope: Scope, after: Cursor | None, before: Cursor | None, *, newest: bool, limit: int):
    if connection.vendor != "postgresql":
        return list(_union(scope, after, before, newest=newest, limit=limit))
    key = _shape(scope, after, before, newest, limit)
    if key not in _compiled:
        _compiled[key] = _compile(scope, after, before, newest, limit)
    sql, roles = _compiled[key]
    values = {
        "rollback": scope.rollback_id,
        "run": scope.run_id,
        "system": scope.system,
        "after_seen": after.seen if after else None,
        "after_id": after.id if after else None,
        "before_seen": before.seen if before else None,
        "before_id": before.id if before else None,
    }
    values.update({f"trace{i}": t for i, t in enumerate(scope.trace_ids)})
    params = [values[v] if kind == "role" else v for kind, v in roles]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def latest(
    scope: Scope, *, before: Cursor | None = None, limit: int = PAGE
) -> tuple[list[Item], bool]:
    """The newest ``limit`` items (older than ``before``), newest first, and whether there
    are older ones. One query."""
    rows = _rows(scope, None, before, newest=True, limit=limit + 1)
    return _items(rows[:limit]), len(rows) > limit


def after(scope: Scope, cursor: Cursor, *, limit: int = PAGE) -> list[Item]:
    """Items recorded after ``cursor``, oldest first, at most ``limit`` (the rest come with
    the next call). One query; it reads only index entries past the cursor."""
    return _items(_rows(scope, cursor, None, newest=False, limit=limit))
