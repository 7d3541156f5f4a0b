import os

from django.core.asgi import get_asgi_application

from config.telemetry import setup_tracing
from rollbacks.middleware import AsgiBodyLimit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
setup_tracing(instrument_django=True)
# Bodies over MAX_BODY_BYTES are refused here, before Django's handler reads (and spools)
# them: under uvicorn no Django middleware runs until the whole body is in.
application = AsgiBodyLimit(get_asgi_application())
