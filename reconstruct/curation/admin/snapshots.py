"""Snapshots of the approved set in the admin: read-only, each with its zip and the runs trained on it."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from reconstruct.curation.models import DatasetSnapshot


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    """Snapshots of the approved set: read-only, each with its zip and the runs trained on it."""

    list_display = ["__str__", "created_at", "created_by", "note", "image_count", "download"]
    readonly_fields = ["created_at", "created_by", "note", "image_count", "manifest_sha256", "download", "runs"]
    fields = readonly_fields

    @admin.display(description="download")
    def download(self, snapshot: DatasetSnapshot) -> str:
        url = reverse("admin:curation_datasetimage_export") + f"?snapshot={snapshot.pk}"
        return format_html('<a href="{}">zip with manifest</a>', url)

    @admin.display(description="training runs")
    def runs(self, snapshot: DatasetSnapshot) -> str:
        return format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            ((reverse("admin:curation_trainingrun_change", args=[r.pk]), str(r)) for r in snapshot.training_runs.all()),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DatasetSnapshot | None = None) -> bool:
        return False
