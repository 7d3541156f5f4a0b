"""The execution loop (rollbacks/engine/loop.py): its claim and record in-process, and a real
worker keeping many steps in flight, a hanging target holding up only its own rollback."""

from __future__ import annotations

import os

import pytest

from ledger.models import Entry
from rollbacks import engine, runs, services
from rollbacks.engine import loop as runner
from rollbacks.models import Attempt, Outbox, Rollback, Step
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks.engine_estate import wait_for

S, R = Step.State, Rollback.State


def _estate(make_system, base: str, n: int, **system_fields):
    """``n`` services with no edges (one stage), each undone by an HTTP call to ``base``."""
    systems = [make_system(f"svc-{i}", **system_fields) for i in range(n)]
    services.dependency_map_publish(edges=[], actor="test")
    for system in systems:
        services.contract_publish(
            system=system,
            actor="test",
            actions={
                "create": {
                    "compensation": {
                        "kind": "http",
                        "method": "POST",
                        "url": base + "/" + system.slug + "/undo/{params.id}",
                    },
                    "attempts": 2,
                    "backoff": {"initial_s": 0.05, "max_s": 0.1},
                    "timeout_s": 10,
                }
            },
        )
    return systems


def _rollback(actor, systems, *, run_id: str, per_system: int = 1) -> Rollback:
    run, _ = runs.run_register(process="p", external_id=run_id, actor="test")
    for system in systems:
        for k in range(per_system):
            runs.action_report(
                run=run,
                system_slug=system.slug,
                action_type="create",
                idempotency_key=f"{run_id}-{system.slug}-{k}",
                actor="test",
                params={"id": f"{run_id}-{k}"},
            )
    runs.run_fail(run=run, reason="failed", actor="test")
    rollback = engine.rollback_plan(run=run, actor=actor, reason="undo it")
    return engine.rollback_start(rollback=rollback, actor=actor)


@pytest.mark.django_db
def test_a_claim_takes_hinted_steps_first_up_to_its_limit_and_opens_their_attempts(
    make_system, alice
):
    systems = _estate(make_system, "http://127.0.0.1:9", 3)
    rollback = _rollback(alice, systems, run_id="r1")
    steps = list(rollback.steps.order_by("pk"))
    hinted = steps[2]
    row = Outbox.objects.filter(kwargs__step_id=hinted.pk).get()

    (claimed,) = runner.claim_batch(hints={hinted.pk: row.pk}, limit=1, worker="loop")

    assert claimed.step.pk == hinted.pk and claimed.attempt.number == 1
    assert Step.objects.get(pk=hinted.pk).state == S.RUNNING
    assert Outbox.objects.get(pk=row.pk).sent_at is not None  # taken at the claim
    assert Attempt.objects.filter(step=hinted, worker="loop").count() == 1
    assert Entry.objects.filter(action="step.attempt.started", subject_id=str(hinted.pk)).exists()
    # The others are still due; a second claim gets them, a third finds nothing.
    assert {c.step.pk for c in runner.claim_batch(hints={}, limit=10, worker="loop")} == {
        steps[0].pk,
        steps[1].pk,
    }
    assert runner.claim_batch(hints={hinted.pk: None}, limit=10, worker="loop") == []


@pytest.mark.django_db
def test_a_systems_max_in_flight_holds_across_claims(make_system, alice):
    (system,) = _estate(make_system, "http://127.0.0.1:9", 1, max_in_flight=2)
    rollback = _rollback(alice, [system], run_id="r1", per_system=5)
    assert rollback.steps.count() == 5

    first = runner.claim_batch(hints={}, limit=10, worker="a")
    second = runner.claim_batch(hints={}, limit=10, worker="b")

    assert len(first) == 2 and second == []
    assert Step.objects.filter(rollback=rollback, state=S.RUNNING).count() == 2


@pytest.mark.django_db
def test_a_claim_mixes_limited_and_unlimited_systems_in_claim_order(make_system, alice):
    """The capped system's hinted step comes first, its limit holds, and the unlimited
    system's steps fill the rest of the claim up to its limit."""
    capped = make_system("capped", max_in_flight=1)
    free = make_system("free")
    services.dependency_map_publish(edges=[], actor="test")
    for system in (capped, free):
        services.contract_publish(
            system=system,
            actor="test",
            actions={"create": {"compensation": {"kind": "simulated"}, "attempts": 1}},
        )
    rollback = _rollback(alice, [capped, free], run_id="mix", per_system=3)
    on_capped = list(rollback.steps.filter(system=capped).order_by("-pk"))
    hinted = on_capped[0]  # the last one made: first only because a message named it

    first = runner.claim_batch(hints={hinted.pk: None}, limit=2, worker="a")
    assert [c.step.pk for c in first][0] == hinted.pk
    assert [c.step.system_id for c in first] == [capped.pk, free.pk]

    second = runner.claim_batch(hints={}, limit=10, worker="b")
    assert sorted(c.step.system_id for c in second) == [free.pk, free.pk]  # capped is at 1
    assert Step.objects.filter(system=capped, state=S.RUNNING).count() == 1


@pytest.mark.django_db
def test_one_record_batch_records_steps_of_several_rollbacks_and_advances_each(make_system, alice):
    systems = _estate(make_system, "http://127.0.0.1:9", 2)
    one = _rollback(alice, systems, run_id="r1")
    two = _rollback(alice, systems, run_id="r2")
    claimed = runner.claim_batch(hints={}, limit=10, worker="loop")
    assert len(claimed) == 4
    results = [runner.Result(c, {"ok": True, "output": {"status": 200}}) for c in claimed[:3]]
    results.append(runner.Result(claimed[3], {"ok": False, "error": "502", "permanent": False}))

    runner.record_batch(results)

    assert [r.verdict for r in results] == ["succeeded"] * 3 + ["will retry"]
    last = claimed[3].step
    finished, waiting = (one, two) if last.rollback_id == two.pk else (two, one)
    finished.refresh_from_db()
    waiting.refresh_from_db()
    assert finished.state == R.SUCCEEDED
    assert waiting.state == R.RUNNING
    assert Step.objects.get(pk=last.pk).state == S.RETRY_WAIT
    outcomes = dict(
        Attempt.objects.filter(step__in=[c.step for c in claimed]).values_list("step_id", "outcome")
    )
    assert outcomes == {c.step.pk: Attempt.Outcome.SUCCEEDED for c in claimed[:3]} | {
        last.pk: Attempt.Outcome.TRANSIENT
    }
    failed = Attempt.objects.get(step=last)
    assert failed.error == "502" and failed.finished_at is not None
    assert Step.objects.get(pk=last.pk).last_error == "502"
    assert not Attempt.objects.filter(step__in=[c.step for c in claimed], finished_at=None).exists()
    # The retry is due at its backoff; claimed again then, as a second attempt.
    Step.objects.filter(pk=last.pk).update(next_attempt_at=None)
    (again,) = runner.claim_batch(hints={}, limit=10, worker="loop")
    assert again.step.pk == last.pk and again.attempt.number == 2


@pytest.mark.django_db
def test_a_stages_steps_dispatched_together_go_out_as_one_message(
    make_system, alice, monkeypatch, django_capture_on_commit_callbacks
):
    from config.celery import app

    systems = _estate(make_system, "http://127.0.0.1:9", 3)
    sent = []
    monkeypatch.setattr(
        app, "send_task", lambda name, kwargs=None, countdown=None: sent.append((name, kwargs))
    )
    with django_capture_on_commit_callbacks(execute=True):
        rollback = _rollback(alice, systems, run_id="r1")
    ((name, kwargs),) = sent
    assert name == "rollbacks.tasks.run_steps"
    assert sorted(kwargs["step_ids"]) == sorted(rollback.steps.values_list("pk", flat=True))
    # One row per step all the same, each marked sent.
    rows = Outbox.objects.filter(task=engine.RUN_STEP)
    assert rows.count() == 3 and not rows.filter(sent_at__isnull=True).exists()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_hanging_target_holds_up_only_its_own_rollback_on_a_real_worker(
    target_server, make_system, transactional_db, tmp_path, alice
):
    """Two pool processes, four rollbacks whose target hangs for 8 s, then four others: the
    others finish while every hanging step is still waiting on its target."""
    import redis

    base, target = target_server
    hang, fast = _estate(make_system, base, 2)
    hanging_ids = [f"h{i}" for i in range(4)]
    for run_id in hanging_ids:
        target.delays[f"/{hang.slug}/undo/{run_id}-0"] = 8.0
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    try:
        hanging = [_rollback(alice, [hang], run_id=r) for r in hanging_ids]
        wait_for(
            lambda: Step.objects.filter(rollback__in=hanging, state=S.RUNNING).count() == 4,
            timeout=20,
            what="the hanging steps to be claimed",
        )
        others = [_rollback(alice, [fast], run_id=f"f{i}") for i in range(4)]
        wait_for(
            lambda: all(Rollback.objects.get(pk=r.pk).state == R.SUCCEEDED for r in others),
            timeout=30,
            what="the other rollbacks",
        )
        # Every hanging step is still in its first attempt, waiting on its target.
        assert Step.objects.filter(rollback__in=hanging, state=S.RUNNING).count() == 4
        assert (
            not Attempt.objects.filter(step__rollback__in=hanging)
            .exclude(outcome=Attempt.Outcome.RUNNING)
            .exists()
        )
        wait_for(
            lambda: all(Rollback.objects.get(pk=r.pk).state == R.SUCCEEDED for r in hanging),
            timeout=40,
            what="the hanging rollbacks to finish too",
        )
    finally:
        stop_process(worker)
    keys = [e["key"] for e in target.effects]
    assert len(keys) == len(set(keys)) == 8  # one effect per step
