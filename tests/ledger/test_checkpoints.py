"""Checkpoints: every chain's head and the entry count, chained and signed with Ed25519."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from ledger import signing
from ledger.canonical import GENESIS, canonical_json
from ledger.checkpoints import checkpoint_take
from ledger.models import Checkpoint, Entry
from ledger.verification import verify

pytestmark = pytest.mark.django_db


def test_a_checkpoint_records_every_chain_head_and_is_signed(ledger_rows):
    checkpoint = checkpoint_take()
    heads = {e.chain: [e.seq, e.hash] for e in Entry.objects.order_by("id")}
    assert checkpoint.heads == heads
    assert (checkpoint.seq, checkpoint.prev_hash) == (1, GENESIS)
    assert (checkpoint.entry_count, checkpoint.chain_count) == (8, 3)
    assert checkpoint.public_key == signing.public_key_b64()
    body = canonical_json(checkpoint.body())
    assert signing.is_valid_signature(checkpoint.public_key, body, checkpoint.signature)
    assert not signing.is_valid_signature(checkpoint.public_key, body + b" ", checkpoint.signature)


def test_the_next_checkpoint_holds_only_the_chains_that_moved_and_links_back(ledger_rows, write):
    first = checkpoint_take()
    assert checkpoint_take() is None  # nothing moved
    moved = write(rollback_id=2)
    second = checkpoint_take()
    assert second.heads == {"rollback:2": [4, moved.hash]}
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert (second.entry_count, second.chain_count) == (9, 3)
    assert verify().summary() == "OK: 9 entries in 3 chains, 2 checkpoints verified"


def test_the_command_takes_one(ledger_rows, capsys):
    call_command("ledger_checkpoint")
    call_command("ledger_checkpoint")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Checkpoint 1: 8 entries in 3 chains, hash ")
    assert out[1] == "No chain moved since the last checkpoint: none taken."


def test_without_a_key_and_with_debug_off_nothing_is_signed(ledger_rows, settings):
    settings.LEDGER_SIGNING_KEY = ""
    settings.DEBUG = False
    with pytest.raises(
        ImproperlyConfigured, match="LEDGER_SIGNING_KEY is not set and DEBUG is off"
    ):
        checkpoint_take()
    assert not Checkpoint.objects.exists()


def test_in_debug_a_key_is_generated_once_and_reused(ledger_rows, settings):
    settings.LEDGER_SIGNING_KEY = ""
    settings.DEBUG = True
    path = settings.LEDGER_SIGNING_KEY_FILE
    assert not path.exists()
    first = checkpoint_take()
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    signing._cache.clear()  # as a new process would
    assert signing.public_key_b64() == first.public_key


def test_a_malformed_key_in_the_environment_stops_the_process_at_start():
    import os
    import subprocess
    import sys

    env = os.environ | {"DEBUG": "1", "LEDGER_SIGNING_KEY": "not-a-key"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "LEDGER_SIGNING_KEY must be the base64 of a 32-byte Ed25519 private key" in result.stderr


def test_the_beat_task_takes_a_checkpoint(ledger_rows):
    from ledger.tasks import checkpoint

    checkpoint.run()
    assert Checkpoint.objects.count() == 1
