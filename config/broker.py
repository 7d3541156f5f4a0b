"""The embedded broker (no ``REDIS_URL``): kombu's filesystem transport, with every message
written under a name the consumers skip and then renamed into place.

kombu's own ``_put`` creates the message file under its final name and only then writes
it. A worker polling every 10 ms can move and read the file in between, find it empty, and
stop on the JSON error: with ``make run`` the worker died this way about 80 s after start
(a beat message). A rename within one directory is atomic on POSIX, so a consumer sees a
whole message or none. Selected by ``CELERY_BROKER_TRANSPORT`` in config/settings.py.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

PARTIAL = ".part"  # ``<ms>_<uuid>.<queue>.msg.part``: not ``<queue>.msg``, so never read


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``: write ``….msg.part``, then rename it ``….msg``."""
        filename = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, filename)
        partial = final + PARTIAL
        try:
            with open(partial, "wb", buffering=0) as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
