"""A break-glass rollback is flagged wherever it appears: the rollback page and list (see
test_pages.py), the runs list and the run's page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from governance import services
from governance.models import ApprovalPolicy
from rollbacks import engine
from rollbacks.models import Rollback
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
FLAG = '<span class="tag break-glass">break-glass</span>'


def test_the_runs_list_and_the_run_page_flag_a_break_glass_rollback(
    client, make_system, target_server, alice
):
    engine_estate.build(make_system, target_server[0])
    ApprovalPolicy.objects.create(name="critical", tiers=[1], approvals_required=1)
    plain = engine_estate.failed_run(external_id="run-plain")
    engine.rollback_plan(run=plain, actor=alice, reason="waits for approval")
    broken = engine_estate.failed_run(external_id="run-broken")
    rollback = engine.rollback_plan(run=broken, actor=alice, reason="orders double charged")
    assert rollback.state == Rollback.State.AWAITING_APPROVAL
    client.force_login(alice)
    assert FLAG not in client.get(reverse("runs")).content.decode()

    alice.user_permissions.add(Permission.objects.get(codename="use_break_glass"))
    alice = type(alice).objects.get(pk=alice.pk)
    services.rollback_break_glass(rollback=rollback, actor=alice, reason="customers charged twice")

    listing = client.get(reverse("runs")).content.decode()
    assert listing.count(FLAG) == 1  # on the broken run's row only
    row = listing[listing.index("run-broken") :]
    assert row.index(FLAG) < row.index("</tr>")
    assert FLAG in client.get(reverse("run", args=[broken.pk])).content.decode()
    assert FLAG not in client.get(reverse("run", args=[plain.pk])).content.decode()
