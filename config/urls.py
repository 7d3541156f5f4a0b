from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from governance import sso
from governance.api import router as governance_router
from ledger.api import router as ledger_router
from metrics.views import metrics
from rollbacks.api import api
from runbooks.api import router as runbooks_router
from timeline.api import router as timeline_router

api.add_router("/alerts", governance_router)
api.add_router("/ledger", ledger_router)
api.add_router("/runbooks", runbooks_router)
api.add_router("/events", timeline_router)

urlpatterns = [
    # Prometheus's default path, without a slash: /metrics/ is the people's metrics page.
    path("metrics", metrics, name="prometheus-metrics"),
    path("login/", sso.LoginView.as_view(), name="login"),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include("governance.urls")),
    path("", include("drills.urls")),
    path("", include("reports.urls")),
    path("ledger/", include("ledger.urls")),
    path("", include("dashboard.urls")),
    path("", include("runbooks.urls")),
    path("reconcile/", include("reconcile.urls")),
    path("", include("timeline.urls")),
    path("", include("rollbacks.urls")),
]
