from django.urls import path

from ledger import views

urlpatterns = [
    path("", views.entry_list, name="ledger"),
    path("<int:pk>/", views.entry_detail, name="ledger-entry"),
    path("verify", views.verify_now, name="ledger-verify"),
    path("exports", views.export_new, name="ledger-export-new"),
    path("exports/<uuid:pk>/", views.export_detail, name="ledger-export"),
    path("exports/<uuid:pk>/file", views.export_file, name="ledger-export-file"),
    path("exports/<uuid:pk>/manifest.json", views.export_manifest, name="ledger-export-manifest"),
]
