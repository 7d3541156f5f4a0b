"""Publishing runbook versions from several connections at once never gives two versions the
same number (the same lock as contracts': ``rollbacks.services.next_version_locked``)."""

from __future__ import annotations

import pytest

from runbooks import services
from runbooks.models import RunbookVersion
from tests.rollbacks.test_concurrency import at_once
from tests.runbooks.conftest import PARAMETERS, STEPS

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_runbook_publishing_gives_distinct_versions(rb):
    errors = at_once(
        lambda i: services.runbook_version_publish(
            runbook=rb.own, parameters=PARAMETERS, steps=STEPS, actor="test", note=f"n{i}"
        )
    )
    assert errors == []
    versions = RunbookVersion.objects.filter(runbook=rb.own).values_list("version", flat=True)
    assert sorted(versions) == list(range(1, 10))  # v1 from the fixture, then eight more
