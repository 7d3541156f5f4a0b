import os

from django.core.asgi import get_asgi_application

from config.telemetry import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
setup_tracing(instrument_django=True)
application = get_asgi_application()
