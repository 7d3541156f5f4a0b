from django.urls import path

from reports import views

urlpatterns = [
    path("rollbacks/<int:pk>/report", views.report_page, name="rollback-report"),
    path("rollbacks/<int:pk>/report.md", views.report_markdown, name="rollback-report-md"),
    path("rollbacks/<int:pk>/report.html", views.report_html, name="rollback-report-html"),
]
