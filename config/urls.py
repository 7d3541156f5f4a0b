from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from rollbacks import views as rollback_views

urlpatterns = [
    path("", rollback_views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("systems/", rollback_views.system_list, name="systems"),
    path("admin/", admin.site.urls),
]
