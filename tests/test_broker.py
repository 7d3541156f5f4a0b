"""The embedded broker hands a consumer whole messages only (config/broker.py), however
fast it polls while a producer writes."""

from __future__ import annotations

import threading
from queue import Empty

from kombu import Connection

from config.broker import PARTIAL, Transport


def _channel(folder):
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "store_processed": False,
    }
    return Connection("filesystem://", transport=Transport, transport_options=options).channel()


def test_a_consumer_polling_while_messages_are_written_reads_only_whole_ones(tmp_path):
    producer, consumer = _channel(tmp_path), _channel(tmp_path)
    body = "x" * 2_000_000  # long enough to take a while to write
    count = 60
    got, errors = [], []
    done = threading.Event()

    def consume():
        while len(got) < count and not done.is_set():
            try:
                got.append(consumer._get("celery"))
            except Empty:
                continue
            except Exception as exc:  # noqa: BLE001 (what the worker would have died of)
                errors.append(exc)
                return

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        for i in range(count):
            producer._put("celery", {"i": i, "body": body})
    finally:
        reader.join(timeout=60)
        done.set()
    assert errors == []
    assert sorted(message["i"] for message in got) == list(range(count))
    assert all(message["body"] == body for message in got)
    assert not list(tmp_path.glob(f"*{PARTIAL}"))
