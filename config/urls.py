from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from governance.api import router as governance_router
from ledger import views as ledger_views
from rollbacks.api import api
from timeline.api import router as timeline_router

api.add_router("/alerts", governance_router)
api.add_router("/events", timeline_router)

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/ledger/export", ledger_views.export_api, name="ledger-export-api"),
    path("api/v1/", api.urls),
    path("", include("governance.urls")),
    path("ledger/", include("ledger.urls")),
    path("", include("timeline.urls")),
    path("", include("rollbacks.urls")),
]
