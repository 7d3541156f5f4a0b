from django.urls import path

from dashboard import views

urlpatterns = [
    path("", views.home, name="home"),
    path("systems/<slug:slug>/", views.system_detail, name="system"),
    path("metrics/", views.metrics_page, name="metrics"),
]
