"""Reconstructions in the admin; the model registry's admin is reconstruct/registry/admin.py (registered here)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from reconstruct import presenters
from reconstruct.models import FILE_KINDS, Reconstruction
from reconstruct.presenters import img_tag
from reconstruct.registry import admin as registry_admin  # noqa: F401  (registers ModelVersion, ModelActivation)
from reconstruct.services.reconstructions import reconstruction_retry

# The admin's left-hand list of every model takes 300 px of a 1280 px window, which the changelists need
# (their buttons and columns); the home page and the breadcrumbs lead to the other lists.
admin.site.enable_nav_sidebar = False


def _file_display(kind: str) -> Callable[[admin.ModelAdmin, Reconstruction], str]:
    """A read-only admin field: a link to one stored file of a reconstruction (``kind``) through the admin's own
    file view, or "-" before it exists."""

    @admin.display(description=kind.replace("_", " "))
    def link(_model_admin: admin.ModelAdmin, obj: Reconstruction) -> str:
        field = getattr(obj, kind)
        if not field:
            return "-"
        url = reverse("admin:reconstruct_reconstruction_file", args=[obj.uuid, kind])
        return format_html('<a href="{}">{}</a>', url, field.name.rsplit("/", 1)[-1])

    return link


@admin.register(Reconstruction)
class ReconstructionAdmin(admin.ModelAdmin):
    list_display = ["thumb", "original_name", "owner", "status", "psnr_db", "kl_nats", "model_version", "created_at"]
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
        "original_file",
        "thumbnail_file",
        "model_input_file",
        "reconstruction_file",
        "original_name",
        "original_format",
        "width",
        "height",
        "mse_value",
        "psnr_db",
        "ssim_value",
        "kl_nats",
        "car_likeness_value",
        "model_version",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    ]

    # The stored files link to the admin's own file view: the storage's address (MEDIA_URL) is not served, and a
    # user's file is served on the site to its owner alone (a staff member following it got a 404).
    exclude = list(FILE_KINDS)

    original_file = _file_display("original")
    thumbnail_file = _file_display("thumbnail")
    model_input_file = _file_display("model_input")
    reconstruction_file = _file_display("reconstruction")

    # Scores rounded to what the site shows (reconstruct/presenters.py), not 0.5277948438686063.
    @admin.display(description="MSE", ordering="mse")
    def mse_value(self, obj: Reconstruction) -> str:
        return "-" if obj.mse is None else f"{obj.mse:.5f}"

    @admin.display(description="PSNR (dB)", ordering="psnr")
    def psnr_db(self, obj: Reconstruction) -> str:
        return "-" if obj.psnr is None else f"{obj.psnr:.2f}"

    @admin.display(description="SSIM", ordering="ssim")
    def ssim_value(self, obj: Reconstruction) -> str:
        return "-" if obj.ssim is None else f"{obj.ssim:.3f}"

    @admin.display(description="KL (nats)", ordering="kl")
    def kl_nats(self, obj: Reconstruction) -> str:
        return "-" if obj.kl is None else f"{obj.kl:.1f}"

    @admin.display(description="car-likeness", ordering="car_likeness")
    def car_likeness_value(self, obj: Reconstruction) -> str:
        return "-" if obj.car_likeness is None else f"{obj.car_likeness:.2f}"

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
