"""Indexes the hot reads rely on exist in the database (migrations applied, not only declared)."""

from __future__ import annotations

import pytest
from django.db import connection

from rollbacks.models import Rollback

pytestmark = pytest.mark.django_db


def _indexed_columns(model) -> list[list[str]]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    return [c["columns"] for c in found.values() if c["index"]]


def test_rollbacks_are_indexed_by_when_they_were_planned():
    # The metrics page picks the rollbacks planned in a period (dashboard/metrics.scoped).
    assert ["created_at"] in _indexed_columns(Rollback)
