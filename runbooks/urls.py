from django.urls import path

from runbooks import views

urlpatterns = [
    path("runbooks/", views.runbook_list, name="runbooks"),
    path("runbooks/<slug:slug>/", views.runbook_detail, name="runbook"),
    path("runbooks/<slug:slug>/instantiate", views.runbook_instantiate, name="runbook-instantiate"),
]
