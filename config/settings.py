"""Unwind's settings: one file, read from the environment, failing loudly on bad values.

Every knob is an environment variable; the defaults are the embedded demo (SQLite and a
filesystem broker under ``var/``). Production sets ``DATABASE_URL``, ``REDIS_URL``,
``SECRET_KEY`` and ``ALLOWED_HOSTS``; see ``docs/configuration.md``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("UNWIND_VAR_DIR", BASE_DIR / "var"))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no."
    )


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below its minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off (set DEBUG=1 for local development)."
        )
    SECRET_KEY = "unwind-insecure-development-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required when DEBUG is off (comma-separated).")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "guardian",
    "django_htmx",
    "ninja",
    "template_partials",
    "csp",
    "pgtrigger",
    "axes",
    "ledger",
    "rollbacks",
    "runbooks",
    "governance",
    "dashboard",
    "drills",
    "reports",
    "reconcile",
    "timeline",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "rollbacks.middleware.ApiBodyLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Databases ---------------------------------------------------------------------------------
_default_db = f"sqlite:///{VAR_DIR / 'unwind.sqlite3'}"
try:
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ.get("DATABASE_URL", _default_db),
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        )
    }
except ValueError as exc:  # dj-database-url raises ValueError on an unknown scheme
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL we understand: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The embedded demo runs web, worker and beat against one file: wait for locks
    # instead of failing, and use WAL so readers never block the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Single sign-on with OpenID Connect (docs/sso.md): on when UNWIND_OIDC_CLIENT_ID is set.
# The endpoints are the provider's (its /.well-known/openid-configuration lists them).
PASSWORD_LOGIN = env_bool("UNWIND_PASSWORD_LOGIN", True)
OIDC_RP_CLIENT_ID = os.environ.get("UNWIND_OIDC_CLIENT_ID", "").strip()
OIDC_RP_CLIENT_SECRET = os.environ.get("UNWIND_OIDC_CLIENT_SECRET", "").strip()
OIDC_OP_AUTHORIZATION_ENDPOINT = os.environ.get("UNWIND_OIDC_AUTHORIZATION_ENDPOINT", "").strip()
OIDC_OP_TOKEN_ENDPOINT = os.environ.get("UNWIND_OIDC_TOKEN_ENDPOINT", "").strip()
OIDC_OP_USER_ENDPOINT = os.environ.get("UNWIND_OIDC_USERINFO_ENDPOINT", "").strip()
OIDC_OP_JWKS_ENDPOINT = os.environ.get("UNWIND_OIDC_JWKS_ENDPOINT", "").strip()
if OIDC_RP_CLIENT_ID:
    _missing = [
        name
        for name, value in [
            ("UNWIND_OIDC_CLIENT_SECRET", OIDC_RP_CLIENT_SECRET),
            ("UNWIND_OIDC_AUTHORIZATION_ENDPOINT", OIDC_OP_AUTHORIZATION_ENDPOINT),
            ("UNWIND_OIDC_TOKEN_ENDPOINT", OIDC_OP_TOKEN_ENDPOINT),
            ("UNWIND_OIDC_USERINFO_ENDPOINT", OIDC_OP_USER_ENDPOINT),
            ("UNWIND_OIDC_JWKS_ENDPOINT", OIDC_OP_JWKS_ENDPOINT),
        ]
        if not value
    ]
    if _missing:
        raise ImproperlyConfigured(f"UNWIND_OIDC_CLIENT_ID is set: set {', '.join(_missing)} too")
elif not PASSWORD_LOGIN:
    raise ImproperlyConfigured(
        "UNWIND_PASSWORD_LOGIN=0 needs single sign-on (UNWIND_OIDC_CLIENT_ID)"
    )
OIDC_RP_SIGN_ALGO = os.environ.get("UNWIND_OIDC_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = os.environ.get("UNWIND_OIDC_SCOPES", "openid email profile groups")
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = False
OIDC_TIMEOUT = env_int("UNWIND_OIDC_TIMEOUT_S", 10, minimum=1)
OIDC_AUTHENTICATE_CLASS = "governance.sso.SSOStartView"
OIDC_CALLBACK_CLASS = "governance.sso.SSOCallbackView"
SSO_PROBE_TIMEOUT_S = 3
SSO_LABEL = os.environ.get("UNWIND_SSO_LABEL", "single sign-on")
SSO_USERNAME_CLAIM = os.environ.get("UNWIND_SSO_USERNAME_CLAIM", "preferred_username")
SSO_GROUPS_CLAIM = os.environ.get("UNWIND_SSO_GROUPS_CLAIM", "groups")
# The provider's groups -> Unwind's groups (roles, and teams as "team:<slug>"), as JSON:
# {"unwind-operators": ["operator"], "payments-oncall": ["team:payments"]}.
try:
    SSO_GROUP_MAP = json.loads(os.environ.get("UNWIND_SSO_GROUP_MAP", "") or "{}")
except ValueError as _exc:
    raise ImproperlyConfigured(f"UNWIND_SSO_GROUP_MAP is not JSON: {_exc}") from None
if not isinstance(SSO_GROUP_MAP, dict) or not all(
    isinstance(v, list) and all(isinstance(g, str) for g in v) for v in SSO_GROUP_MAP.values()
):
    raise ImproperlyConfigured(
        "UNWIND_SSO_GROUP_MAP must map each provider group to a list of Unwind groups: "
        '{"unwind-operators": ["operator"], "payments-oncall": ["team:payments"]}'
    )

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out account or address before the password is checked.
    "axes.backends.AxesStandaloneBackend",
    *(["django.contrib.auth.backends.ModelBackend"] if PASSWORD_LOGIN else []),
    "governance.sso.UnwindOIDCBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous visitors see nothing

# Login throttling (django-axes, docs/permissions.md): after LOGIN_FAILURE_LIMIT failed
# logins for one username, or from one address, that username or address is locked out for
# LOGIN_COOLOFF_S, counted from its latest failure. Every failure and lockout is ledgered.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOGIN_COOLOFF_S", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# Serve straight from the finders in the embedded demo; production runs collectstatic.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", DEBUG)
if WHITENOISE_USE_FINDERS:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing

# Request limits: the API refuses bodies above this with 413 (rollbacks/api.py).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_BODY_BYTES", 1024 * 1024, minimum=1024)

# Security ----------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# A strict Content-Security-Policy: no inline script, no eval, no inline style.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Celery ------------------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://"
    )
BROKER_DIR = VAR_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 3600}
else:
    # Embedded broker: messages are files under var/broker. Polling at 10 ms moves a few
    # hundred tasks a second between processes; at the default 1 s it crawls.
    CELERY_BROKER_URL = "filesystem://"
    # kombu's filesystem transport, writing each message atomically (config/broker.py).
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
    for _folder in ("queue", "processed", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.01,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Workers keep their database connection between tasks (docs/engine.md, "Worker database
# connections"): Celery's Django fix-up otherwise closes it before and after every task, and
# a new PostgreSQL connection costs 4-12 ms a step. config/celery.py replaces a connection
# older than this, or one that fails its health check, at the start of a task; 0 brings back
# a new connection for every task.
WORKER_DB_CONN_MAX_AGE = env_int("WORKER_DB_CONN_MAX_AGE", 300, minimum=0)
if WORKER_DB_CONN_MAX_AGE:
    # The fix-up then closes connections only every 1000 tasks; the age above decides.
    CELERY_DB_REUSE_MAX = 1000
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
HEALTH_CHECK_INTERVAL = timedelta(seconds=env_int("HEALTH_CHECK_INTERVAL_S", 30, minimum=1))
SWEEP_INTERVAL_S = env_int("SWEEP_INTERVAL_S", 5, minimum=1)
# The engine's fast path (docs/engine.md): a worker that finishes a step runs the next
# stage's step itself, without a broker hop, up to this many in a row; 0 turns it off.
ENGINE_INLINE_STEPS = env_int("ENGINE_INLINE_STEPS", 20, minimum=0)
# The execution loop (rollbacks/engine/loop.py, docs/engine.md): each worker process runs up to
# ENGINE_STEPS_IN_FLIGHT steps at once; a step waiting on its target holds no pool process.
# Off (0): a pool process runs one step at a time, as Celery tasks (the sweeper then re-sends
# lost messages).
ENGINE_RUNNER = env_bool("ENGINE_RUNNER", True)
ENGINE_STEPS_IN_FLIGHT = env_int("ENGINE_STEPS_IN_FLIGHT", 64, minimum=1)
# Blocking compensations (SQL, drill faults) run on this many threads per worker process.
ENGINE_SYNC_THREADS = env_int("ENGINE_SYNC_THREADS", 8, minimum=1)
# How often an idle loop looks for due steps whose message it did not get (lost, or sent
# to a busy worker), in milliseconds; and the claim's lease, renewed every third of it.
ENGINE_POLL_MS = env_int("ENGINE_POLL_MS", 250, minimum=10)
ENGINE_LEASE_S = env_int("ENGINE_LEASE_S", 4, minimum=2)
# Health checks older than this are pruned by the beat task (docs/dashboard.md).
HEALTH_HISTORY_RETENTION_DAYS = env_int("HEALTH_HISTORY_RETENTION_DAYS", 30, minimum=1)
DASHBOARD_POLL_S = env_int("DASHBOARD_POLL_S", 10, minimum=1)  # the overview's htmx refresh
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "rollbacks.tasks.sweep", "schedule": float(SWEEP_INTERVAL_S)},
    "check-system-health": {
        "task": "rollbacks.tasks.check_all_health",
        "schedule": HEALTH_CHECK_INTERVAL.total_seconds(),
    },
}

# Bounded tables (docs/engine.md): beat prunes sent outbox rows older than this and expired
# sessions every PRUNE_INTERVAL_S, in batches. At least 10 minutes: a sent row is the record
# that its message went out.
OUTBOX_RETENTION_S = env_int("OUTBOX_RETENTION_S", 86400, minimum=600)
PRUNE_INTERVAL_S = env_int("PRUNE_INTERVAL_S", 600, minimum=1)
CELERY_BEAT_SCHEDULE["prune-tables"] = {
    "task": "rollbacks.maintenance.prune_tables",
    "schedule": float(PRUNE_INTERVAL_S),
}
# autodiscover_tasks imports each app's tasks module only; the worker imports these too.
CELERY_IMPORTS = ["rollbacks.maintenance"]

# Reconciliation (docs/reconciliation.md): hand on runs whose worker died.
CELERY_BEAT_SCHEDULE["reconcile-sweep"] = {
    "task": "reconcile.tasks.sweep",
    "schedule": float(SWEEP_INTERVAL_S),
}

# Ledger (docs/ledger.md) -------------------------------------------------------------------
# Ed25519 key that signs checkpoints and export manifests: base64 of the 32 raw private bytes
# (`manage.py ledger_keygen`). Without it, DEBUG generates one into var/ and production
# refuses to sign. LEDGER_TRUSTED_PUBLIC_KEYS lists earlier public keys after a rotation.
LEDGER_SIGNING_KEY = os.environ.get("LEDGER_SIGNING_KEY", "").strip()
if LEDGER_SIGNING_KEY:
    try:
        _ledger_key_length = len(base64.b64decode(LEDGER_SIGNING_KEY, validate=True))
    except binascii.Error:
        _ledger_key_length = -1
    if _ledger_key_length != 32:
        raise ImproperlyConfigured(
            "LEDGER_SIGNING_KEY must be the base64 of a 32-byte Ed25519 private key "
            "(manage.py ledger_keygen prints one)."
        )
LEDGER_SIGNING_KEY_FILE = VAR_DIR / "ledger-signing.key"
LEDGER_TRUSTED_PUBLIC_KEYS = env_list("LEDGER_TRUSTED_PUBLIC_KEYS", [])
LEDGER_CHECKPOINT_INTERVAL_S = env_int("LEDGER_CHECKPOINT_INTERVAL_S", 300, minimum=1)
CELERY_BEAT_SCHEDULE["ledger-checkpoint"] = {
    "task": "ledger.tasks.checkpoint",
    "schedule": float(LEDGER_CHECKPOINT_INTERVAL_S),
}

# A periodic verification of the whole ledger, whose result /metrics reports
# (unwind_ledger_verification_ok); 0 turns it off (verify_ledger by hand or cron instead).
LEDGER_VERIFY_INTERVAL_S = env_int("LEDGER_VERIFY_INTERVAL_S", 3600)
if LEDGER_VERIFY_INTERVAL_S:
    CELERY_BEAT_SCHEDULE["ledger-verify"] = {
        "task": "ledger.tasks.verify",
        "schedule": float(LEDGER_VERIFY_INTERVAL_S),
    }

# Prometheus metrics at /metrics (docs/metrics.md) -------------------------------------------
# A scraper sending "Authorization: Bearer <METRICS_TOKEN>" is let in from anywhere; without
# it, only the addresses and networks of METRICS_ALLOW (loopback by default).
METRICS_TOKEN = os.environ.get("UNWIND_METRICS_TOKEN", "").strip()
METRICS_ALLOW = env_list("UNWIND_METRICS_ALLOW", ["127.0.0.1", "::1"])
for _network in METRICS_ALLOW:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"UNWIND_METRICS_ALLOW: {_exc}") from None
# prometheus-client's multiprocess mode: every process (web, each Celery pool process) keeps
# its counters in files here, and /metrics adds them up. Set before prometheus_client is
# first imported (it reads it then); the web and the workers of one host share it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# The demo (make run) -------------------------------------------------------------------------
# Where the demo's loopback targets (demo/targets.py) answer. demo/estate.yaml names them at
# http://127.0.0.1:9100; seed_demo points the estate it loads at this base instead, so the
# tests can serve the targets on a free port beside a running `make run`.
DEMO_TARGETS_URL = os.environ.get("DEMO_TARGETS_URL", "http://127.0.0.1:9100").rstrip("/")
if not DEMO_TARGETS_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"DEMO_TARGETS_URL={DEMO_TARGETS_URL!r} must start with http:// or https://"
    )

# Alerts and escalation (docs/alerts.md) ----------------------------------------------------
# Where notifications link to (absolute URLs in emails and webhooks), e.g. https://unwind.example.com
UNWIND_BASE_URL = os.environ.get("UNWIND_BASE_URL", "").rstrip("/")
ESCALATION_WEBHOOK_URL = os.environ.get("ESCALATION_WEBHOOK_URL", "").strip()
if ESCALATION_WEBHOOK_URL and not ESCALATION_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"ESCALATION_WEBHOOK_URL={ESCALATION_WEBHOOK_URL!r} must start with http:// or https://"
    )
ESCALATION_EMAILS = env_list("ESCALATION_EMAILS", [])
APPROVAL_DEADLINE_S = env_int("APPROVAL_DEADLINE_S", 900, minimum=1)
ESCALATION_LOOKBACK_S = env_int("ESCALATION_LOOKBACK_S", 86400, minimum=60)
ESCALATION_INTERVAL_S = env_int("ESCALATION_INTERVAL_S", 30, minimum=1)
CELERY_BEAT_SCHEDULE["escalate"] = {
    "task": "governance.tasks.escalate",
    "schedule": float(ESCALATION_INTERVAL_S),
}
CELERY_BEAT_SCHEDULE["match-stale-alerts"] = {
    "task": "governance.tasks.match_stale_alerts",
    "schedule": 60.0,
}
EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_S", 10, minimum=1)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "unwind@localhost")

# Observability -----------------------------------------------------------------------------
OTEL_SERVICE_NAME = os.environ.get("OTEL_SERVICE_NAME", "unwind")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # One line per probe and per compensation call (and per login) is noise; errors still show.
    "loggers": {
        "httpx": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        # Django's default config gives "django" a console handler of its own under DEBUG;
        # with the root's, every 4xx was printed twice. The root's handler prints it once.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
UNWIND_GOVERNANCE = "governance.gate"  # the engine's approval hooks (docs/architecture.md)
UNWIND_ESTATE_EXTENSION = (
    "governance.estate.SECTIONS"  # policies and triggers in the estate document
)

# Drills and reports (docs/drills.md, docs/reports.md) --------------------------------------
UNWIND_DRILLS = "drills.hooks"  # the engine's drill hooks: a drill's injected faults
# The sections of a rollback's report, in order: providers ``(rollback) -> dict | None``.
UNWIND_REPORT_SECTIONS = [
    "reports.sections.summary",
    "runbooks.report.report_section",
    "reports.sections.metrics",
    "drills.report.report_section",
    "reports.sections.decisions",
    "reports.sections.stages",
    "reports.sections.waits",
    "reports.sections.steps",
    "reconcile.report.report_section",
    "reports.sections.timeline",
]
# The rollback page's panels from other apps, in order: key (the DOM id of the panel) →
# provider ``(request, rollback, page) -> rollbacks.panels.Panel | None`` (rollbacks/panels.py).
UNWIND_ROLLBACK_PANELS = {
    # Live panels, inside the polled status (rollbacks/panels.py, LIVE_REGIONS).
    "approval-panel": "governance.panels.approval_panel",
    "break-glass-start": "governance.panels.break_glass_form",
    "break-glass": "governance.panels.break_glass",
    "stage-gate": "governance.panels.stage_gates",
    "policy-decision": "governance.panels.policy",
    # Around it, each polling itself while it can still change.
    "rollback-runbook": "runbooks.panels.runbook_fact",
    "report-status": "reports.panels.report_status",
    "drill-faults": "drills.panels.faults",
    "reconciliation": "reconcile.panels.reconciliation",
    "health-around": "dashboard.panels.health_around",
    "timeline": "timeline.page.rollback_panel",
}
