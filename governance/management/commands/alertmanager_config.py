"""Print an Alertmanager configuration that sends alerts to Unwind.

    manage.py alertmanager_config https://unwind.example.com \\
        --credentials-file /etc/alertmanager/unwind.token > alertmanager.yml

The token is a service token of an operator account (``manage.py create_service_token``).
"""

from __future__ import annotations

from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError

WEBHOOK_PATH = "/api/v1/alerts/alertmanager"


def receiver_config(
    base_url: str,
    *,
    credentials: str | None = None,
    credentials_file: str | None = None,
    receiver: str = "unwind",
    group_by: list[str] | None = None,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
    max_alerts: int = 500,
) -> dict[str, Any]:
    """A whole Alertmanager configuration (route + receiver) pointing at Unwind."""
    if bool(credentials) == bool(credentials_file):
        raise ValueError("give the token inline (credentials) or as a file (credentials_file)")
    authorization = {"type": "Bearer"}
    if credentials:
        authorization["credentials"] = credentials
    else:
        authorization["credentials_file"] = credentials_file
    return {
        "route": {
            "receiver": receiver,
            "group_by": group_by or ["alertname"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {
                "name": receiver,
                "webhook_configs": [
                    {
                        "url": base_url.rstrip("/") + WEBHOOK_PATH,
                        "send_resolved": True,
                        # Keeps a huge group under Unwind's MAX_BODY_BYTES (a 413 is dropped).
                        "max_alerts": max_alerts,
                        "http_config": {"authorization": authorization},
                    }
                ],
            }
        ],
    }


class Command(BaseCommand):
    help = "Print an Alertmanager configuration (YAML) whose receiver posts to Unwind."

    def add_arguments(self, parser):
        parser.add_argument(
            "base_url", help="Where Unwind is served, e.g. https://unwind.example.com"
        )
        token = parser.add_mutually_exclusive_group(required=True)
        token.add_argument(
            "--credentials-file", help="A file holding the service token (recommended)."
        )
        token.add_argument("--credentials", help="The service token itself (ends up in the file).")
        parser.add_argument("--group-by", nargs="+", default=["alertname"])

    def handle(self, *args, base_url, credentials_file, credentials, group_by, **options):
        if not base_url.startswith(("http://", "https://")):
            raise CommandError(f"{base_url!r} is not an http:// or https:// URL")
        config = receiver_config(
            base_url,
            credentials=credentials,
            credentials_file=credentials_file,
            group_by=group_by,
        )
        self.stdout.write(yaml.safe_dump(config, sort_keys=False), ending="")
