"""Alert-triggered rollbacks: Prometheus Alertmanager webhooks (version 4) in, rollbacks out.

Two halves, because Alertmanager retries a 5xx and silently drops a 4xx (FACTS.md):

1. ``webhook_parse`` + ``alerts_store`` run in the request. A malformed payload is refused
   whole, naming each problem by its path (``alerts[2].startsAt: not an RFC 3339 time``);
   a valid one is stored in one transaction (one row per occurrence: the ``alert_dedupe``
   constraint on fingerprint + startsAt + status absorbs repeats and HA pairs) together
   with its ledger entries and the outbox row that queues the matching. Then 200.
2. ``alerts_match`` runs on a worker (``governance.tasks.match_alerts``), so a slow plan
   never makes Alertmanager retry: trigger rules are matched, and a matching rule plans a
   rollback of the run the alert names, starting it only where the policies let an alert
   start it. What happened is written on the alert (``outcome``) and ledgered.

See docs/alerts.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone as dj_timezone

import ledger.services as ledger
from governance.models import Alert, PolicyDecision, TriggerRule
from rollbacks import engine, outbox
from rollbacks.models import ProcessRun, Rollback
from rollbacks.storable import time_problem

MATCH_ALERTS = "governance.tasks.match_alerts"
FIRING, RESOLVED = "firing", "resolved"
STATUSES = (FIRING, RESOLVED)
MAX_ERRORS = 20  # a payload with thousands of bad alerts gets a readable answer
STALE_AFTER = timedelta(seconds=120)  # a firing alert unmatched this long lost its message

# Payload validation ---------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(value: Any) -> datetime | None:
    """An aware datetime, or None when ``value`` is not an RFC 3339 date-time with an offset.

    Stricter than ``datetime.fromisoformat``, which also takes dates, week dates and times
    without an offset; Alertmanager's nanoseconds are truncated to microseconds.
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    if offset in ("Z", "z"):
        tz = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:  # month 13, 30 February, second 60…
        return None


@dataclass
class IncomingAlert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    fingerprint: str


@dataclass
class Webhook:
    group_key: str
    receiver: str
    status: str
    alerts: list[IncomingAlert] = field(default_factory=list)


class PayloadError(Exception):
    """The payload is malformed; ``errors`` lists (path, message), each naming a problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))


def _string_map(value: Any, path: str, errors: list[tuple[str, str]]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append((path, "must be a mapping of names to strings"))
        return {}
    for key, item in value.items():
        if not isinstance(item, str):
            errors.append((f"{path}.{key}", "must be a string"))
    return value


def webhook_parse(data: Any) -> Webhook:
    """Validate an Alertmanager webhook (version 4); raise PayloadError naming every problem.

    Unknown top-level fields (``externalURL``, ``truncatedAlerts``, …) are ignored, so a newer
    Alertmanager that adds fields is still understood.
    """
    errors: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        raise PayloadError([("body", "must be a JSON object (an Alertmanager webhook)")])
    if data.get("version") != "4":
        got = "missing" if "version" not in data else f"got {data['version']!r}"
        errors.append(("version", f'must be "4" (Alertmanager webhook version 4); {got}'))
    group_key = data.get("groupKey")
    if not isinstance(group_key, str) or not group_key:
        errors.append(("groupKey", "is required: a non-empty string"))
    receiver = data.get("receiver", "")
    if not isinstance(receiver, str):
        errors.append(("receiver", "must be a string"))
    status = data.get("status", FIRING)
    if status not in STATUSES:
        errors.append(("status", 'must be "firing" or "resolved"'))
    # Fields Unwind does not use are still checked for the type the payload defines.
    if not isinstance(data.get("externalURL", ""), str):
        errors.append(("externalURL", "must be a string"))
    truncated = data.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int):
        errors.append(("truncatedAlerts", "must be a whole number"))
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        _string_map(data.get(key), key, errors)
    alerts = data.get("alerts")
    parsed: list[IncomingAlert] = []
    if not isinstance(alerts, list) or not alerts:
        errors.append(("alerts", "is required: a non-empty list of alerts"))
        alerts = []
    for i, item in enumerate(alerts):
        path = f"alerts[{i}]"
        if not isinstance(item, dict):
            errors.append((path, "must be an object"))
            continue
        before = len(errors)
        a_status = item.get("status")
        if a_status not in STATUSES:
            errors.append((f"{path}.status", 'must be "firing" or "resolved"'))
        if "labels" not in item:
            errors.append((f"{path}.labels", "is required: a mapping of label names to strings"))
        labels = _string_map(item.get("labels"), f"{path}.labels", errors)
        annotations = _string_map(item.get("annotations"), f"{path}.annotations", errors)
        if not isinstance(item.get("generatorURL", ""), str):
            errors.append((f"{path}.generatorURL", "must be a string"))
        starts_at = parse_rfc3339(item.get("startsAt"))
        if starts_at is None:
            errors.append((f"{path}.startsAt", "not an RFC 3339 time"))
        elif problem := time_problem(starts_at):
            errors.append((f"{path}.startsAt", problem))
        ends_at = None
        if item.get("endsAt") not in (None, ""):
            ends_at = parse_rfc3339(item["endsAt"])
            if ends_at is None:
                errors.append((f"{path}.endsAt", "not an RFC 3339 time"))
            elif ends_at.year == 1:  # Go's zero time: "0001-01-01T00:00:00Z" while firing
                ends_at = None
            elif problem := time_problem(ends_at):
                errors.append((f"{path}.endsAt", problem))
        fingerprint = item.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint.strip():
            errors.append((f"{path}.fingerprint", "is required: a non-empty string"))
        elif len(fingerprint) > 100:
            errors.append((f"{path}.fingerprint", "is longer than 100 characters"))
        if len(errors) == before:
            parsed.append(
                IncomingAlert(a_status, labels, annotations, starts_at, ends_at, fingerprint)
            )
    if errors:
        if len(errors) > MAX_ERRORS:
            more = len(errors) - MAX_ERRORS
            errors = errors[:MAX_ERRORS] + [("alerts", f"… and {more} more problems")]
        raise PayloadError(errors)
    # Stored as received; a group key longer than the column is cut (it only groups, the
    # dedupe key is fingerprint + startsAt + status).
    return Webhook(group_key[:1000], receiver[:200], status, parsed)


# Label matchers -------------------------------------------------------------------------------


def parse_matcher(spec: Any) -> Callable[[str], bool]:
    """A predicate over one label's value (an absent label is the empty string, as in
    Prometheus). Raises ValueError for a matcher that cannot be used.

    ``"value"`` exact; ``"=~regex"`` the whole value matches; ``"!=value"`` anything else;
    ``"!~regex"`` the whole value does not match; ``"=value"`` exact, for a value that itself
    begins with ``=~``, ``!=`` or ``!~`` (``"==~x"`` is exactly ``=~x``).
    """
    if isinstance(spec, bool) or not isinstance(spec, str | int):
        raise ValueError("must be a string: a value, =~regex, !=value or !~regex")
    spec = str(spec)
    for prefix, negate in (("=~", False), ("!~", True)):
        if spec.startswith(prefix):
            try:
                pattern = re.compile(spec[2:])
            except re.error as exc:
                raise ValueError(f"invalid regular expression {spec[2:]!r}: {exc}") from None
            return lambda value: (pattern.fullmatch(value) is not None) != negate
    if spec.startswith("!="):
        expected = spec[2:]
        return lambda value: value != expected
    expected = spec[1:] if spec.startswith("=") else spec
    return lambda value: value == expected


def matcher_errors(match: Any) -> list[tuple[str, str]]:
    """(label, problem) for every unusable matcher of a rule (for admin and estate checks)."""
    if not isinstance(match, dict):
        return [("match", "must be a mapping of label names to matchers")]
    errors = []
    for label, spec in match.items():
        try:
            parse_matcher(spec)
        except ValueError as exc:
            errors.append((str(label), str(exc)))
    return errors


def labels_match(match: dict, labels: dict[str, str]) -> bool:
    """Every matcher matches (an empty ``match`` matches every alert)."""
    return all(parse_matcher(spec)(labels.get(label, "")) for label, spec in match.items())


@dataclass
class RuleMatch:
    rules: list[TriggerRule]  # the rules whose matchers match, by name
    broken: list[str]  # "rule: label: problem" for rules skipped as unusable


def rules_matching(labels: dict[str, str], rules: Iterable[TriggerRule]) -> RuleMatch:
    found = RuleMatch([], [])
    for rule in rules:
        problems = matcher_errors(rule.match)
        if problems:
            found.broken.append(f"{rule.name}: " + "; ".join(f"{k}: {m}" for k, m in problems))
        elif labels_match(rule.match, labels):
            found.rules.append(rule)
    return found


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_reason(template: str, labels: dict[str, str]) -> str:
    """``{label}`` replaced by the alert's label; an unknown name stays as written. No
    attribute or index access: a template is text, never code."""
    return _PLACEHOLDER.sub(lambda m: labels.get(m[1], m[0]), template)


# Storing --------------------------------------------------------------------------------------


@dataclass
class Stored:
    alert: Alert
    is_new: bool
    rule: str | None  # the first rule whose matchers match (firing alerts)


def active_rules() -> list[TriggerRule]:
    return list(TriggerRule.objects.filter(is_active=True).order_by("name"))


def alerts_store(*, webhook: Webhook, actor: Any) -> list[Stored]:
    """Store every alert of a webhook in one transaction, with its ledger entry; queue the
    matching of the new firing ones after commit (through the outbox, so it is not lost).

    A repeat of an occurrence already stored (same fingerprint, startsAt and status) is not
    stored again and not matched again.
    """
    rules = active_rules()
    out: list[Stored] = []
    with transaction.atomic():
        for incoming in webhook.alerts:
            alert, is_new = Alert.objects.get_or_create(
                fingerprint=incoming.fingerprint,
                starts_at=incoming.starts_at,
                status=incoming.status,
                defaults={
                    "receiver": webhook.receiver,
                    "group_key": webhook.group_key,
                    "ends_at": incoming.ends_at,
                    "labels": incoming.labels,
                    "annotations": incoming.annotations,
                },
            )
            rule = None
            if alert.status == FIRING:
                matched = rules_matching(alert.labels, rules).rules
                rule = matched[0].name if matched else None
            if is_new:
                _record_received(alert, actor)
            out.append(Stored(alert, is_new, rule))
        to_match = sorted({s.alert.pk for s in out if s.is_new and s.alert.status == FIRING})
        if to_match:
            outbox.enqueue(
                MATCH_ALERTS,
                alert_ids=to_match,
                group_alert_ids=sorted({s.alert.pk for s in out if s.alert.status == FIRING}),
                actor_id=getattr(actor, "pk", None),
            )
    return out


def _record_received(alert: Alert, actor: Any) -> None:
    payload = {
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "starts_at": alert.starts_at.isoformat(),
        "group_key": alert.group_key,
        "labels": alert.labels,
    }
    if alert.status == RESOLVED:
        firing = (
            Alert.objects.filter(
                fingerprint=alert.fingerprint, starts_at=alert.starts_at, status=FIRING
            )
            .only("pk", "rule_id", "rollback_id")
            .first()
        )
        alert.rule_id = firing.rule_id if firing else None
        alert.rollback_id = firing.rollback_id if firing else None
        alert.outcome = "resolved: recorded; a resolved alert never plans anything" + (
            f" (it fired as alert #{firing.pk})" if firing else ""
        )
        alert.save(update_fields=["rule", "rollback", "outcome"])
        payload["firing_alert"] = firing.pk if firing else None
    ledger.record(
        actor=actor,
        action="alert.resolved" if alert.status == RESOLVED else "alert.received",
        subject=alert,
        rollback_id=alert.rollback_id,
        reason=f"{alert.labels.get('alertname', '?')} {alert.status}",
        payload=payload,
    )


# Matching -------------------------------------------------------------------------------------


def find_run(value: str) -> tuple[ProcessRun | None, str]:
    """The run a label names by its id or its external id; (None, why) when it names none
    or more than one (never guess which run to roll back)."""
    candidates = list(ProcessRun.objects.filter(external_id=value)[:5])
    if value.isdigit() and len(value) <= 18:
        by_id = ProcessRun.objects.filter(pk=int(value)).first()
        if by_id is not None and by_id not in candidates:
            candidates.append(by_id)
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        return None, f"{value!r} names no process run (by id or external id)"
    names = ", ".join(f"run {r.pk} ({r})" for r in candidates)
    return None, f"{value!r} is ambiguous: it names {names}"


def _group_of(alert: Alert, group_alert_ids: list[int] | None) -> list[Alert]:
    """The firing alerts of the alert's group, for thresholds: those of the webhook that
    delivered it when known, else the group's occurrences not yet resolved."""
    if group_alert_ids:
        return list(Alert.objects.filter(pk__in=group_alert_ids, status=FIRING))
    group = Alert.objects.filter(group_key=alert.group_key, status=FIRING)
    resolved = set(
        Alert.objects.filter(group_key=alert.group_key, status=RESOLVED).values_list(
            "fingerprint", "starts_at"
        )
    )
    return [a for a in group if (a.fingerprint, a.starts_at) not in resolved]


def alerts_match(
    *, alert_ids: list[int], group_alert_ids: list[int] | None = None, actor_id: int | None = None
) -> dict[int, str]:
    """Match each new firing alert; returns alert id -> outcome. Safe to run twice: an
    alert is matched once (its row is locked and its outcome checked)."""
    user = get_user_model().objects.filter(pk=actor_id, is_active=True).first()
    rules = active_rules()
    outcomes = {}
    for alert_id in sorted(alert_ids):
        outcome = _match_one(alert_id, rules, group_alert_ids, user)
        if outcome is not None:
            outcomes[alert_id] = outcome
    return outcomes


def alerts_match_stale(*, older_than: timedelta = STALE_AFTER) -> dict[int, str]:
    """Match firing alerts whose matching message was lost (a worker killed mid-task): the
    outbox covers a crash before publishing, this covers one after. The account that sent
    the alert is read back from its ledger entry."""
    from ledger.models import Entry

    cutoff = dj_timezone.now() - older_than
    outcomes = {}
    rules = active_rules()
    stale = Alert.objects.filter(status=FIRING, outcome="", received_at__lt=cutoff)
    for alert_id in list(stale.order_by("pk").values_list("pk", flat=True)[:500]):
        sender = (
            Entry.objects.filter(
                subject_type="alert", subject_id=str(alert_id), action="alert.received"
            )
            .select_related("actor_user")
            .first()
        )
        outcome = _match_one(alert_id, rules, None, sender.actor_user if sender else None)
        if outcome is not None:
            outcomes[alert_id] = outcome
    return outcomes


def _match_one(
    alert_id: int, rules: list[TriggerRule], group_alert_ids: list[int] | None, user: Any
) -> str | None:
    """One transaction per alert: its outcome, the plan (and start) and their ledger entries
    commit together, so a crash leaves the alert unmatched, never half-matched."""
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update().filter(pk=alert_id, status=FIRING, outcome="").first()
        )
        if alert is None:
            return None  # matched already (a duplicate message), or not a firing alert
        result = _decide(alert, rules, group_alert_ids, user)
        alert.rule, alert.rollback, alert.outcome = result.rule, result.rollback, result.outcome
        alert.save(update_fields=["rule", "rollback", "outcome"])
        ledger.record(
            actor=result.actor or user or "alertmanager",
            action="alert.matched" if result.rule else "alert.unmatched",
            subject=alert,
            rollback_id=result.rollback.pk if result.rollback else None,
            trace_id=result.rollback.trace_id if result.rollback else "",
            reason=result.outcome,
            outcome=result.ledger_outcome,
            payload={
                "rule": result.rule.name if result.rule else None,
                "run": result.run.pk if result.run else None,
                "rollback": result.rollback.pk if result.rollback else None,
                "fingerprint": alert.fingerprint,
                "started": result.started,
                "is_drill": bool(result.rollback and result.rollback.is_drill),
            },
        )
    return result.outcome


@dataclass
class _Decision:
    outcome: str
    rule: TriggerRule | None = None
    run: ProcessRun | None = None
    rollback: Rollback | None = None
    actor: Any = None
    started: bool = False
    ledger_outcome: str = "ok"


def _messages(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(m for msgs in exc.message_dict.values() for m in msgs)
    return "; ".join(exc.messages)


def _decide(
    alert: Alert, rules: list[TriggerRule], group_alert_ids: list[int] | None, user: Any
) -> _Decision:
    """What to do with one firing alert, done inside the caller's transaction.

    1. An occurrence already resolved plans nothing.
    2. The first rule (by name) whose matchers match and whose threshold the group's firing
       alerts reach applies; none: "no rule matched" (or "below threshold").
    3. The run is the one the rule's ``run_label`` names (id or external id).
    4. A run with a rollback under way gets none more.
    5. Plan as the rule's service account (else the account that sent the alert), with
       ``trigger="alert"`` and the rule's drill flag; the approval policies decide.
    6. Start it only when it is approved straight away and every matching policy lets an
       alert start it (``auto_start``).
    """
    if Alert.objects.filter(
        fingerprint=alert.fingerprint, starts_at=alert.starts_at, status=RESOLVED
    ).exists():
        return _Decision("resolved before it was matched: nothing planned")
    found = rules_matching(alert.labels, rules)
    broken = f" (skipped unusable rules: {'; '.join(found.broken)})" if found.broken else ""
    if not found.rules:
        return _Decision("no rule matched" + broken)
    group = _group_of(alert, group_alert_ids)
    counts = {
        candidate.pk: len(
            {a.fingerprint for a in group if labels_match(candidate.match, a.labels)}
            | {alert.fingerprint}
        )
        for candidate in found.rules
    }
    rule = next((r for r in found.rules if counts[r.pk] >= r.min_alerts), None)
    if rule is None:
        first = found.rules[0]
        return _Decision(
            f"below threshold: {counts[first.pk]} of {first.min_alerts} firing alerts of the "
            f"group match rule {first.name}",
            rule=first,
        )
    actor = rule.service_account or user
    refused = {"rule": rule, "actor": actor, "ledger_outcome": "refused"}
    if actor is None or not actor.is_active:
        return _Decision(
            "refused: no active account to plan as (the rule has no service account and the "
            "sender's account is gone)",
            **refused,
        )
    value = alert.labels.get(rule.run_label, "")
    if not value:
        return _Decision(
            f"run not found: the alert has no {rule.run_label} label naming the run", **refused
        )
    run, why = find_run(value)
    if run is None:
        return _Decision(f"run not found: {rule.run_label}={why}", **refused)
    under_way = _rollback_under_way(run)
    if under_way is not None:
        return _Decision(
            f"a rollback of this run is already under way: #{under_way.pk}",
            run=run,
            rollback=under_way,
            **refused,
        )
    reason = render_reason(rule.reason_template, alert.labels).strip() or (
        f"alert {alert.fingerprint} matched rule {rule.name}"
    )
    try:
        rollback = engine.rollback_plan(
            run=run, actor=actor, reason=reason, is_drill=rule.drill, trigger="alert"
        )
    except PermissionDenied as exc:  # refused and ledgered by the engine
        return _Decision(f"refused: {actor.get_username()}: {exc}", run=run, **refused)
    except ValidationError as exc:
        under_way = _rollback_under_way(run)  # planned concurrently by another alert
        if under_way is not None:
            return _Decision(
                f"a rollback of this run is already under way: #{under_way.pk}",
                run=run,
                rollback=under_way,
                **refused,
            )
        return _Decision(f"could not plan: {_messages(exc)}", run=run, **refused)
    return _maybe_start(rollback, rule=rule, run=run, actor=actor)


def _rollback_under_way(run: ProcessRun) -> Rollback | None:
    return (
        Rollback.objects.filter(run=run)
        .exclude(state__in=Rollback.TERMINAL)
        .order_by("-pk")
        .first()
    )


def _maybe_start(
    rollback: Rollback, *, rule: TriggerRule, run: ProcessRun, actor: Any
) -> _Decision:
    decision = PolicyDecision.objects.filter(rollback=rollback).first()
    requirements = decision.requirements if decision else {}
    names = requirements.get("policies") or []
    policies = f"polic{'ies' if len(names) > 1 else 'y'} {', '.join(names)}" if names else ""
    done = {"rule": rule, "run": run, "rollback": rollback, "actor": actor}
    planned = f"planned rollback #{rollback.pk}" + (" (a drill)" if rollback.is_drill else "")
    if rollback.state == Rollback.State.AWAITING_APPROVAL:
        return _Decision(f"{planned}; awaiting approval ({policies or 'no policy'})", **done)
    if rollback.state != Rollback.State.APPROVED:
        return _Decision(f"{planned}; it is {rollback.get_state_display()}", **done)
    if not requirements.get("auto_start"):
        why = (
            f"{policies} do not all let an alert start it"
            if names
            else "no approval policy applies, and only a policy lets an alert start a rollback"
        )
        return _Decision(f"{planned}; approved but not started: {why}", **done)
    try:
        rollback = engine.rollback_start(rollback=rollback, actor=actor)
    except (PermissionDenied, ValidationError) as exc:
        message = str(exc) if isinstance(exc, PermissionDenied) else _messages(exc)
        return _Decision(f"{planned}; could not start it: {message}", **done)
    return _Decision(
        f"{planned} and started it ({policies} let an alert start it)", started=True, **done
    )
