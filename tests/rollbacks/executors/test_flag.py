"""The flag executor turns a flag off through an Unleash-style admin API on a real target."""

from __future__ import annotations

import pytest

from rollbacks.executors import ExecutorError, executor_for

from .conftest import TRACEPARENT


def test_flag_is_turned_off_once_with_the_key_and_trace_context(target_server, make_work):
    base, state = target_server
    work = make_work(
        "flag",
        {
            "base_url": f"{base}/flags/",
            "project": "checkout",
            "feature": "new-pricing",
            "environment": "production",
        },
    )
    first = executor_for("flag").execute(work)
    second = executor_for("flag").execute(work)

    path = "/flags/api/admin/projects/checkout/features/new-pricing/environments/production/off"
    assert [(c["path"], c["key"], c["traceparent"]) for c in state.calls] == [
        (path, work.idempotency_key, TRACEPARENT)
    ] * 2
    assert len(state.effects) == 1
    assert state.effects[0]["flag"] == {
        "project": "checkout",
        "feature": "new-pricing",
        "environment": "production",
        "enabled": False,
    }
    assert first.output["status"] == 200 and first.output["flag"]["enabled"] is False
    assert second.output["replayed"] is True


def test_project_defaults_to_default_and_segments_are_quoted(target_server, make_work):
    base, state = target_server
    spec = {"base_url": f"{base}/flags", "feature": "../../_reset", "environment": "prod?x=1"}
    executor_for("flag").execute(make_work("flag", spec))
    assert state.calls[0]["path"] == (
        "/flags/api/admin/projects/default/features/..%2F..%2F_reset/environments/prod%3Fx%3D1/off"
    )
    assert state.effects[0]["flag"]["feature"] == "..%2F..%2F_reset"


@pytest.mark.parametrize("status, is_permanent", [(503, False), (404, True)])
def test_flag_failures_are_classified_like_http(target_server, make_work, status, is_permanent):
    base, state = target_server
    path = "/flags/api/admin/projects/default/features/f/environments/prod/off"
    state.failures[path] = status
    with pytest.raises(ExecutorError) as caught:
        executor_for("flag").execute(
            make_work("flag", {"base_url": f"{base}/flags", "feature": "f", "environment": "prod"})
        )
    assert caught.value.permanent is is_permanent
    assert caught.value.message.startswith(f"POST {base}{path}: {status}")


def test_a_feature_named_dot_dot_is_refused_before_any_call(target_server, make_work):
    """Quoting leaves ``..`` as it is, and httpx would resolve it (issue 16, finding 5)."""
    base, state = target_server
    spec = {"base_url": f"{base}/flags", "feature": "..", "environment": "prod"}
    with pytest.raises(ExecutorError, match="segment") as caught:
        executor_for("flag").execute(make_work("flag", spec))
    assert caught.value.permanent is True and state.calls == []
