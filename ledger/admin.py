from django.contrib import admin

from ledger.models import Checkpoint, Entry


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger is append-only: nothing is added, changed or deleted from the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Entry)
class EntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "at",
        "chain",
        "seq",
        "actor",
        "action",
        "subject_type",
        "subject_id",
        "outcome",
    )
    list_filter = ("action", "outcome")
    search_fields = ("actor", "action", "subject_id", "trace_id", "reason", "chain")


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("seq", "taken_at", "entry_count", "chain_count", "hash")
