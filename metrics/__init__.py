"""Prometheus metrics at ``/metrics`` (docs/metrics.md).

``events.py`` counts what happens in the process that does it (the Celery worker's pool
processes included, through prometheus-client's multiprocess mode); ``collectors.py`` reads
the state of things from the database at scrape time; ``views.py`` serves both, behind a
token or an allow-list.
"""
