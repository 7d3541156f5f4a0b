"""An experiment, not a recommendation of this exact form: the project's settings plus
``CELERY_DB_REUSE_MAX``, so that Celery's Django fix-up stops closing the database
connection before and after every task (it reconnects every N tasks instead).

    DEBUG=1 .venv/bin/python -m bench.step_overhead --worker-settings bench.settings_db_reuse
"""

from config.settings import *  # noqa: F403

CELERY_DB_REUSE_MAX = 1000
DATABASES["default"]["CONN_MAX_AGE"] = 600  # noqa: F405
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # noqa: F405
