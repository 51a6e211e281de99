"""The training set in the admin: the list with its checks, a photo's page with review buttons, bulk upload, export.

Every button and action calls one service (reconstruct/curation/services/); these views only parse
requests and render answers.
"""

from __future__ import annotations

import re
import tempfile

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from reconstruct.curation import selectors
from reconstruct.curation.admin.filters import (
    CarLikenessFilter,
    ExtremeAspectFilter,
    GreyscaleFilter,
    NearDuplicateFilter,
    TooSmallFilter,
    VersionFilter,
)
from reconstruct.curation.models import DatasetImage, DatasetSnapshot
from reconstruct.curation.services.arrival import Arrival, dataset_image_add_many, zip_arrivals
from reconstruct.curation.services.export import dataset_export_zip
from reconstruct.curation.services.review import (
    dataset_image_approve,
    dataset_image_flip,
    dataset_image_reject,
    dataset_image_set_orientation,
)
from reconstruct.http import LENGTH_REQUIRED, json_error, length_missing, wants_json
from reconstruct.presenters import img_tag
from reconstruct.storage import storage_serve


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class BulkUploadForm(forms.Form):
    """Only rendered: the view reads request.FILES itself (many files, or a zip read lazily)."""

    files = forms.FileField(
        required=False,
        widget=MultipleFileInput(attrs={"accept": "image/jpeg,image/png,image/webp"}),
        help_text="JPEG, PNG or WebP photos; select as many as you like.",
    )
    archive = forms.FileField(
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
        help_text="Or a .zip of photos (folders inside are fine).",
    )


@admin.register(DatasetImage)
class DatasetImageAdmin(admin.ModelAdmin):
    """The training set: list with checks and filters, review actions, a photo's page, bulk upload, export."""

    change_list_template = "admin/curation/datasetimage/change_list.html"
    change_form_template = "admin/curation/datasetimage/change_form.html"
    list_display = ["thumb", "id", "status", "check_flags", "likeness", "orientation", "source", "original_name"]
    list_display_links = ["thumb", "id"]
    list_filter = [
        "status",
        "source",
        "orientation",
        NearDuplicateFilter,
        TooSmallFilter,
        GreyscaleFilter,
        ExtremeAspectFilter,
        CarLikenessFilter,
        VersionFilter,
    ]
    search_fields = ["=id", "original_name", "=content_hash", "=phash"]
    list_select_related = ["near_duplicate_of"]
    list_per_page = 100
    date_hierarchy = "added_at"
    actions = [
        "approve",
        "reject",
        "flip",
        "orient_left",
        "orient_right",
        "orient_unknown",
    ]
    readonly_fields = [
        "preview",
        "status",
        "orientation",
        "source",
        "original_name",
        "format",
        "width",
        "height",
        "byte_size",
        "added_by",
        "added_at",
        "reviewed_by",
        "reviewed_at",
        "content_hash",
        "phash",
        "near_duplicate",
        "size_check",
        "greyscale_check",
        "aspect_check",
        "likeness_check",
        "versions",
        "reconstruction_link",
    ]
    fieldsets = [
        (None, {"fields": ["preview", "status", "orientation", "source", "original_name", "versions"]}),
        (
            "Checks",
            {
                # Each check in words ("No (at least ...)"): the raw booleans showed a passed check as a red cross.
                "fields": ["near_duplicate", "size_check", "greyscale_check", "aspect_check", "likeness_check"]
            },
        ),
        (
            "File",
            {"fields": ["format", "width", "height", "byte_size", "content_hash", "phash", "reconstruction_link"]},
        ),
        ("History", {"fields": ["added_by", "added_at", "reviewed_by", "reviewed_at"]}),
    ]

    # -- list columns

    def _file_url(self, image: DatasetImage, kind: str) -> str:
        return reverse("admin:curation_datasetimage_file", args=[image.pk, kind])

    @admin.display(description="")
    def thumb(self, image: DatasetImage) -> str:
        return img_tag(self._file_url(image, "thumbnail"), 48, f"#{image.pk}") if image.thumbnail else "-"

    @admin.display(description="checks")
    def check_flags(self, image: DatasetImage) -> str:
        flags = []
        if image.near_duplicate_of_id:
            url = reverse("admin:curation_datasetimage_change", args=[image.near_duplicate_of_id])
            flags.append(
                format_html(
                    '<a href="{}" title="perceptual hash distance {}{}">near dup. of #{}</a>',
                    url,
                    image.near_duplicate_distance,
                    ", mirrored" if image.near_duplicate_mirrored else "",
                    image.near_duplicate_of_id,
                )
            )
        for flagged, label in (
            (image.too_small, "too small"),
            (image.greyscale, "greyscale"),
            (image.extreme_aspect, f"aspect {image.aspect:.1f}:1"),
            (not image.is_current, "older version"),
            (image.derivation == "flip", "flipped"),
        ):
            if flagged:
                flags.append(format_html("<span>{}</span>", label))
        return mark_safe(" · ".join(flags)) if flags else "✓"

    @admin.display(description="car-likeness", ordering="car_likeness")
    def likeness(self, image: DatasetImage) -> str:
        if image.car_likeness is None:
            return "-"
        colour = "#c0392b" if image.car_likeness < settings.CURATION_LOW_CAR_LIKENESS else "inherit"
        return format_html('<span style="color:{}">{}</span>', colour, f"{image.car_likeness:.2f}")

    # -- detail fields

    @admin.display(description="photo")
    def preview(self, image: DatasetImage) -> str:
        return format_html(
            '<a href="{}" target="_blank">{}</a><br>{}\N{MULTIPLICATION SIGN}{} px',
            self._file_url(image, "file"),
            img_tag(self._file_url(image, "file"), 200, image.original_name),
            image.width,
            image.height,
        )

    @admin.display(description="near duplicate of")
    def near_duplicate(self, image: DatasetImage) -> str:
        other = image.near_duplicate_of
        if other is None:
            return "No"
        return format_html(
            '<a href="{}">{}<br>#{} {}</a> — distance {} of 64 bits{}',
            reverse("admin:curation_datasetimage_change", args=[other.pk]),
            img_tag(self._file_url(other, "thumbnail"), 100),
            other.pk,
            other.original_name,
            image.near_duplicate_distance,
            " (it matches the other photo mirrored)" if image.near_duplicate_mirrored else "",
        )

    @admin.display(description="too small")
    def size_check(self, image: DatasetImage) -> str:
        limit = f"{settings.CURATION_MIN_WIDTH}\N{MULTIPLICATION SIGN}{settings.CURATION_MIN_HEIGHT}"
        if image.too_small:
            return f"Yes: smaller than {limit} in both directions, so the model would have to enlarge it"
        return f"No (at least {limit} in one direction)"

    @admin.display(description="greyscale")
    def greyscale_check(self, image: DatasetImage) -> str:
        return "Yes: no colour anywhere in the picture" if image.greyscale else "No"

    @admin.display(description="extreme aspect ratio")
    def aspect_check(self, image: DatasetImage) -> str:
        allowed = f"{settings.CURATION_MIN_ASPECT:g}:1 to {settings.CURATION_MAX_ASPECT:g}:1"
        return f"{'Yes' if image.extreme_aspect else 'No'}: {image.aspect:.2f}:1 (expected {allowed})"

    @admin.display(description="car-likeness")
    def likeness_check(self, image: DatasetImage) -> str:
        if image.car_likeness is None:
            return "Not scored (no calibrated model was active when it arrived)"
        verdict = "does not look like a car" if image.car_likeness < settings.CURATION_LOW_CAR_LIKENESS else "car-like"
        return (
            f"{image.car_likeness:.2f}, {verdict} (a typical training car scores about 0.5; "
            f"under {settings.CURATION_LOW_CAR_LIKENESS:g} is flagged) by model {image.car_likeness_model}"
        )

    @admin.display(description="versions")
    def versions(self, image: DatasetImage) -> str:
        family = list(selectors.dataset_image_family(image))
        if len(family) == 1:
            return "Only this one."
        return format_html_join(
            " ",
            '<a href="{}" title="{}">{}</a>',
            (
                (
                    reverse("admin:curation_datasetimage_change", args=[v.pk]),
                    f"#{v.pk} {'(current)' if v.is_current else ''}",
                    img_tag(self._file_url(v, "thumbnail"), 60 if v.pk != image.pk else 72),
                )
                for v in family
            ),
        )

    @admin.display(description="donated from")
    def reconstruction_link(self, image: DatasetImage) -> str:
        if image.reconstruction_id is None:
            return "-"
        url = reverse("admin:reconstruct_reconstruction_change", args=[image.reconstruction_id])
        return format_html('<a href="{}">reconstruction #{}</a>', url, image.reconstruction_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # photos arrive through the bulk upload page, the import command or donations

    def has_change_permission(self, request: HttpRequest, obj: DatasetImage | None = None) -> bool:
        # The pages are read-only; reviewing goes through the actions and buttons (one service each).
        return False

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("curation.change_datasetimage")

    # -- actions

    @admin.action(permissions=["review"], description="Approve the selected photos")
    def approve(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self.message_user(request, f"{dataset_image_approve(images=queryset, user=request.user)} photo(s) approved.")

    @admin.action(permissions=["review"], description="Reject the selected photos")
    def reject(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self.message_user(request, f"{dataset_image_reject(images=queryset, user=request.user)} photo(s) rejected.")

    @admin.action(permissions=["review"], description="Flip the selected photos horizontally (keeps the originals)")
    def flip(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        flipped, refused = 0, []
        for image in queryset.filter(is_current=True):
            try:
                dataset_image_flip(image=image, user=request.user)
                flipped += 1
            except ValidationError as error:
                refused.append(f"#{image.pk}: {' '.join(error.messages)}")
        self.message_user(request, f"{flipped} photo(s) flipped; the originals are kept as older versions.")
        if refused:
            self.message_user(request, "Not flipped: " + "; ".join(refused), messages.WARNING)

    def _orient(self, request: HttpRequest, queryset: QuerySet[DatasetImage], orientation: str) -> None:
        count = dataset_image_set_orientation(images=queryset, orientation=orientation, user=request.user)
        label = DatasetImage.Orientation(orientation).label.lower()
        self.message_user(request, f"{count} photo(s) marked “{label}”.")

    @admin.action(permissions=["review"], description="Mark as facing left (canonical)")
    def orient_left(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self._orient(request, queryset, DatasetImage.Orientation.LEFT)

    @admin.action(permissions=["review"], description="Mark as facing right")
    def orient_right(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self._orient(request, queryset, DatasetImage.Orientation.RIGHT)

    @admin.action(permissions=["review"], description="Mark orientation as unknown")
    def orient_unknown(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self._orient(request, queryset, DatasetImage.Orientation.UNKNOWN)

    # -- extra pages

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("upload/", wrap(self.upload_view), name="curation_datasetimage_upload"),
            path("export/", wrap(self.export_view), name="curation_datasetimage_export"),
            path("<int:pk>/file/<str:kind>/", wrap(self.file_view), name="curation_datasetimage_file"),
            path("<int:pk>/review/", wrap(self.review_view), name="curation_datasetimage_review"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "counts": selectors.dataset_counts()})

    def file_view(self, request: HttpRequest, pk: int, kind: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        image = get_object_or_404(DatasetImage, pk=pk)
        if kind not in ("file", "thumbnail"):
            raise Http404("No such file.")
        key = getattr(image, kind).name
        return storage_serve(
            key=key,
            filename=f"dataset-{image.pk}.{key.rsplit('.', 1)[-1]}",
            download="download" in request.GET,
            max_age=600,
        )

    def review_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The buttons on a photo's page: one service call each, then back to the (current) photo."""
        if request.method != "POST" or not self.has_review_permission(request):
            raise PermissionDenied
        image = get_object_or_404(DatasetImage, pk=pk)
        one = DatasetImage.objects.filter(pk=pk)
        action = request.POST.get("action", "")
        target = image
        try:
            if action == "approve":
                dataset_image_approve(images=one, user=request.user)
            elif action == "reject":
                dataset_image_reject(images=one, user=request.user)
            elif action == "flip":
                target = dataset_image_flip(image=image, user=request.user)
            elif action in DatasetImage.Orientation.values:
                dataset_image_set_orientation(images=one, orientation=action, user=request.user)
            else:
                raise ValidationError(f"Unknown action {action!r}.")
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
        else:
            self.message_user(request, f"Done: {action} on #{image.pk}.")
        if request.POST.get("next") == "list":
            return HttpResponseRedirect(reverse("admin:curation_datasetimage_changelist"))
        return HttpResponseRedirect(reverse("admin:curation_datasetimage_change", args=[target.pk]))

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        """Many photos or a zip. The page's script sends files in small batches and asks for JSON, so
        it can show upload and processing progress; without script the form posts everything at once."""
        if not request.user.has_perm("curation.add_datasetimage"):
            raise PermissionDenied
        json_wanted = wants_json(request)
        report = None
        form = BulkUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and length_missing(request):
            if json_wanted:
                return json_error(LENGTH_REQUIRED, 411)
            form = BulkUploadForm({})
            form.is_valid()
            form.add_error(None, LENGTH_REQUIRED)
        elif request.method == "POST":
            arrivals: list[Arrival] = []
            for uploaded in request.FILES.getlist("files"):
                arrivals.append((uploaded.name, uploaded.read))
            archive = request.FILES.get("archive")
            try:
                if archive is not None:
                    arrivals.extend(zip_arrivals(archive))
                if not arrivals:
                    raise ValidationError("Choose some photos or a zip file first.")
            except ValidationError as error:
                if json_wanted:
                    return json_error(" ".join(error.messages), 400)
                form.add_error(None, error)
            else:
                report = dataset_image_add_many(
                    arrivals=arrivals, source=DatasetImage.Source.BULK, added_by=request.user
                )
                if json_wanted:
                    return JsonResponse(report.to_dict())
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Upload photos to the training set",
            "form": form,
            "report": report,
            "batch_size": 10,
            "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
        }
        return TemplateResponse(request, "admin/curation/datasetimage/upload.html", context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The approved set as a zip with its manifest, built in a temporary file (never in memory)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        snapshot = None
        if request.GET.get("snapshot"):
            if not re.fullmatch(r"[0-9]{1,18}", request.GET["snapshot"]):  # an id; anything else names none
                raise Http404("No such snapshot.")
            snapshot = get_object_or_404(DatasetSnapshot, pk=request.GET["snapshot"])
        # Not a context manager: FileResponse closes (and so deletes) the spool once it is sent.
        spool = tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR)  # noqa: SIM115
        count = dataset_export_zip(out=spool, snapshot=snapshot)
        if count == 0 and snapshot is None:
            spool.close()
            self.message_user(request, "There are no approved photos to export yet.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:curation_datasetimage_changelist"))
        spool.seek(0)
        stamp = timezone.now().strftime("%Y%m%d-%H%M")
        name = f"carsite-snapshot-{snapshot.pk}.zip" if snapshot else f"carsite-approved-{stamp}.zip"
        return FileResponse(spool, as_attachment=True, filename=name, content_type="application/zip")
