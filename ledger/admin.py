from django.contrib import admin

from ledger.models import Entry


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    """Read-only: the ledger is append-only."""

    list_display = ("at", "actor", "action", "subject_type", "subject_id", "outcome")
    list_filter = ("action", "outcome")
    search_fields = ("actor", "action", "subject_id", "trace_id", "reason")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
