"""Reconstructions in the admin; the model registry's admin is reconstruct/registry/admin.py (registered here)."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse

from reconstruct import presenters
from reconstruct.models import Reconstruction
from reconstruct.presenters import img_tag
from reconstruct.registry import admin as registry_admin  # noqa: F401  (registers ModelVersion, ModelActivation)
from reconstruct.services.reconstructions import reconstruction_retry


@admin.register(Reconstruction)
class ReconstructionAdmin(admin.ModelAdmin):
    list_display = ["thumb", "original_name", "owner", "status", "psnr", "kl", "model_version", "created_at"]
    list_display_links = ["thumb", "original_name"]
    list_filter = ["status", "model_version", "created_at"]
    search_fields = ["uuid", "original_name", "owner__username", "owner__email"]
    list_select_related = ["owner", "model_version"]
    date_hierarchy = "created_at"
    actions = ["retry"]
    readonly_fields = [
        "uuid",
        "owner",
        "status",
        "error",
        "original",
        "thumbnail",
        "model_input",
        "reconstruction",
        "original_name",
        "original_format",
        "width",
        "height",
        "mse",
        "psnr",
        "ssim",
        "kl",
        "car_likeness",
        "model_version",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    ]

    @admin.display(description="")
    def thumb(self, obj: Reconstruction) -> str:
        if not obj.thumbnail:
            return "-"
        return img_tag(reverse("admin:reconstruct_reconstruction_file", args=[obj.uuid, "thumbnail"]))

    def get_urls(self) -> list[URLPattern]:
        file_view = self.admin_site.admin_view(self.file_view)
        return [
            path("<uuid:public_id>/file/<str:kind>/", file_view, name="reconstruct_reconstruction_file"),
            *super().get_urls(),
        ]

    def file_view(self, request: HttpRequest, public_id: uuid.UUID, kind: str) -> HttpResponse:
        """Any user's stored file, for staff who may view reconstructions: the one way staff see other people's
        files (on the site itself every reconstruction is its owner's alone, reconstruct/views.py)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        reconstruction = get_object_or_404(Reconstruction, uuid=public_id)
        return presenters.file_response(reconstruction, kind, download="download" in request.GET)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Reconstruction | None = None) -> bool:
        return False

    @admin.action(description="Try the selected failed reconstructions again")
    def retry(self, request: HttpRequest, queryset: QuerySet[Reconstruction]) -> None:
        count = 0
        for reconstruction in queryset.filter(status=Reconstruction.Status.FAILED):
            reconstruction_retry(reconstruction)
            count += 1
        self.message_user(request, f"{count} reconstruction(s) queued again.")
