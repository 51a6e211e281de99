"""The staff side of curation: the training set, bulk upload and export, training runs with live
progress, and the model registry (compare, activate, roll back, audit trail).

Every button and action calls one function in reconstruct/curation/services.py (or the site's
model_version_activate); the views here only parse requests and render answers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from reconstruct import services as site_services
from reconstruct.curation import charts, selectors, services
from reconstruct.curation.models import DatasetImage, DatasetSnapshot, TrainingRun
from reconstruct.models import ModelActivation, ModelVersion


def _serve(key: str, filename: str, download: bool = False) -> HttpResponse:
    """A stored file to a staff member: a presigned URL with S3, streamed from disk otherwise."""
    if not key:
        raise Http404("No such file.")
    if hasattr(default_storage, "bucket_name") and not settings.RECONSTRUCT_FILES_VIA_APP:
        parameters = {"ResponseContentDisposition": f'attachment; filename="{filename}"'} if download else None
        return HttpResponseRedirect(default_storage.url(key, parameters=parameters))
    try:
        handle = default_storage.open(key, "rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    response = FileResponse(handle, as_attachment=download, filename=filename)
    response["Cache-Control"] = "private, max-age=600"
    return response


def _img(url: str, height: int = 48, alt: str = "") -> str:
    return format_html('<img src="{}" alt="{}" loading="lazy" style="height:{}px;border-radius:3px">', url, alt, height)


# --- Dataset images --------------------------------------------------------------------------------


class _YesNoFilter(admin.SimpleListFilter):
    """A filter on one boolean check, worded for people."""

    field = ""
    lookup_choices = (("yes", "Yes"), ("no", "No"))

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return self.lookup_choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(**{self.field: self.value() == "yes"})
        return queryset


class NearDuplicateFilter(admin.SimpleListFilter):
    title = "near duplicate"
    parameter_name = "near_duplicate"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(near_duplicate_of__isnull=self.value() == "no")
        return queryset


class TooSmallFilter(_YesNoFilter):
    title = "too small"
    parameter_name = "too_small"
    field = "too_small"


class GreyscaleFilter(_YesNoFilter):
    title = "greyscale"
    parameter_name = "greyscale"
    field = "greyscale"


class ExtremeAspectFilter(_YesNoFilter):
    title = "extreme aspect ratio"
    parameter_name = "extreme_aspect"
    field = "extreme_aspect"


class CarLikenessFilter(admin.SimpleListFilter):
    title = "car-likeness"
    parameter_name = "car_likeness"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (
            ("low", f"Low (under {settings.CURATION_LOW_CAR_LIKENESS:g})"),
            ("mid", "Medium"),
            ("high", "Typical of the training cars (0.5 and over)"),
            ("none", "Not scored"),
        )

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        low = settings.CURATION_LOW_CAR_LIKENESS
        if self.value() == "low":
            return queryset.filter(car_likeness__lt=low)
        if self.value() == "mid":
            return queryset.filter(car_likeness__gte=low, car_likeness__lt=0.5)
        if self.value() == "high":
            return queryset.filter(car_likeness__gte=0.5)
        if self.value() == "none":
            return queryset.filter(car_likeness__isnull=True)
        return queryset


class VersionFilter(admin.SimpleListFilter):
    """Current versions by default: the older version of a flipped photo is history, not data."""

    title = "version"
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (("all", "All, older versions too"), ("old", "Older versions only"), ("flipped", "Flipped versions"))

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Current",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "all":
            return queryset
        if self.value() == "old":
            return queryset.filter(is_current=False)
        if self.value() == "flipped":
            return queryset.filter(derivation="flip")
        return queryset.filter(is_current=True)


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
                "fields": [
                    "near_duplicate",
                    "too_small",
                    "greyscale",
                    "extreme_aspect",
                    "car_likeness",
                    "car_likeness_model",
                ]
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
        return _img(self._file_url(image, "thumbnail"), 48, f"#{image.pk}") if image.thumbnail else "-"

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
            _img(self._file_url(image, "file"), 200, image.original_name),
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
            _img(self._file_url(other, "thumbnail"), 100),
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
                    _img(self._file_url(v, "thumbnail"), 60 if v.pk != image.pk else 72),
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
        self.message_user(request, f"{services.dataset_image_approve(queryset, request.user)} photo(s) approved.")

    @admin.action(permissions=["review"], description="Reject the selected photos")
    def reject(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        self.message_user(request, f"{services.dataset_image_reject(queryset, request.user)} photo(s) rejected.")

    @admin.action(permissions=["review"], description="Flip the selected photos horizontally (keeps the originals)")
    def flip(self, request: HttpRequest, queryset: QuerySet[DatasetImage]) -> None:
        flipped, refused = 0, []
        for image in queryset.filter(is_current=True):
            try:
                services.dataset_image_flip(image, request.user)
                flipped += 1
            except ValidationError as error:
                refused.append(f"#{image.pk}: {' '.join(error.messages)}")
        self.message_user(request, f"{flipped} photo(s) flipped; the originals are kept as older versions.")
        if refused:
            self.message_user(request, "Not flipped: " + "; ".join(refused), messages.WARNING)

    def _orient(self, request: HttpRequest, queryset: QuerySet[DatasetImage], orientation: str) -> None:
        count = services.dataset_image_set_orientation(queryset, orientation, request.user)
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
        return _serve(key, f"dataset-{image.pk}.{key.rsplit('.', 1)[-1]}", download="download" in request.GET)

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
                services.dataset_image_approve(one, request.user)
            elif action == "reject":
                services.dataset_image_reject(one, request.user)
            elif action == "flip":
                target = services.dataset_image_flip(image, request.user)
            elif action in DatasetImage.Orientation.values:
                services.dataset_image_set_orientation(one, action, request.user)
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
        wants_json = "application/json" in request.headers.get("Accept", "")
        report = None
        form = BulkUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST":
            arrivals: list[services.Arrival] = []
            for uploaded in request.FILES.getlist("files"):
                arrivals.append((uploaded.name, uploaded.read))
            archive = request.FILES.get("archive")
            try:
                if archive is not None:
                    arrivals.extend(services.zip_arrivals(archive))
                if not arrivals:
                    raise ValidationError("Choose some photos or a zip file first.")
            except ValidationError as error:
                if wants_json:
                    return JsonResponse({"error": " ".join(error.messages)}, status=400)
                form.add_error(None, error)
            else:
                report = services.dataset_image_add_many(
                    arrivals, source=DatasetImage.Source.BULK, added_by=request.user
                )
                if wants_json:
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
            snapshot = get_object_or_404(DatasetSnapshot, pk=request.GET["snapshot"])
        # Not a context manager: FileResponse closes (and so deletes) the spool once it is sent.
        spool = tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR)  # noqa: SIM115
        count = services.dataset_export_zip(spool, snapshot=snapshot)
        if count == 0 and snapshot is None:
            spool.close()
            self.message_user(request, "There are no approved photos to export yet.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:curation_datasetimage_changelist"))
        spool.seek(0)
        stamp = timezone.now().strftime("%Y%m%d-%H%M")
        name = f"carsite-snapshot-{snapshot.pk}.zip" if snapshot else f"carsite-approved-{stamp}.zip"
        return FileResponse(spool, as_attachment=True, filename=name, content_type="application/zip")


# --- Snapshots -------------------------------------------------------------------------------------


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
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


# --- Training runs ---------------------------------------------------------------------------------


class TrainingRunStartForm(forms.Form):
    config = forms.ChoiceField(help_text="ml/configs/<name>.json: the model's size and the training recipe.")
    epochs = forms.IntegerField(
        min_value=1, max_value=5000, required=False, help_text="Leave empty for the config's own number."
    )
    note = forms.CharField(max_length=200, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["config"].choices = [(name, _config_label(name)) for name in services.training_config_names()]
        if "quick" in services.training_config_names():
            self.fields["config"].initial = "quick"


def _config_label(name: str) -> str:
    config = services.training_config_load(name)
    model = config["model"]
    size = f"{model['width']}\N{MULTIPLICATION SIGN}{model['height']}"
    return f"{name}: {size} input, latent {model['latent_dim']}, {config['epochs']} epochs"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    change_form_template = "admin/curation/trainingrun/change_form.html"
    list_display = ["__str__", "status", "config_name", "progress", "snapshot", "created_by", "created_at", "version"]
    list_filter = ["status", "config_name"]
    list_select_related = ["snapshot", "created_by", "model_version"]
    # Status, phase and errors are in the live progress section above these (which the page updates).
    readonly_fields = [
        "config_name",
        "epochs",
        "snapshot",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "attempts",
    ]
    fields = readonly_fields

    @admin.display(description="progress")
    def progress(self, run: TrainingRun) -> str:
        return f"{run.epoch} / {run.epochs} epochs"

    @admin.display(description="model version")
    def version(self, run: TrainingRun) -> str:
        if run.model_version_id is None:
            return "-"
        url = reverse("admin:reconstruct_modelversion_change", args=[run.model_version_id])
        return format_html('<a href="{}">{}</a>', url, run.model_version.name)

    def has_change_permission(self, request: HttpRequest, obj: TrainingRun | None = None) -> bool:
        return False  # a run changes only through its worker and the cancel button

    def has_delete_permission(self, request: HttpRequest, obj: TrainingRun | None = None) -> bool:
        return False

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/progress.json", wrap(self.progress_view), name="curation_trainingrun_progress"),
            path("<int:pk>/cancel/", wrap(self.cancel_view), name="curation_trainingrun_cancel"),
            path("<int:pk>/file/<str:kind>/", wrap(self.file_view), name="curation_trainingrun_file"),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """Start a run: choose a config and epochs; the approved set is frozen into a snapshot."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TrainingRunStartForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.training_run_start(
                    request.user, form.cleaned_data["config"], form.cleaned_data["epochs"], form.cleaned_data["note"]
                )
            except ValidationError as error:
                form.add_error(None, error)
            else:
                self.message_user(request, f"{run} queued on {run.snapshot}.")
                return HttpResponseRedirect(reverse("admin:curation_trainingrun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start a training run",
            "form": form,
            "counts": selectors.dataset_counts(),
            "min_images": settings.CURATION_MIN_TRAINING_IMAGES,
        }
        return TemplateResponse(request, "admin/curation/trainingrun/start.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        run = get_object_or_404(TrainingRun, pk=object_id)
        context = {**(extra_context or {}), **_progress(run), "run": run}
        return super().change_view(request, object_id, form_url, context)

    def progress_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = _progress(get_object_or_404(TrainingRun, pk=pk))
        data["chart_svg"] = str(data["chart_svg"])
        return JsonResponse(data)

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not request.user.has_perm("curation.add_trainingrun"):
            raise PermissionDenied
        run = services.training_run_cancel(get_object_or_404(TrainingRun, pk=pk), request.user)
        if run.status == TrainingRun.Status.CANCELLED:
            self.message_user(request, f"{run} cancelled.")
        elif not run.is_finished:
            self.message_user(request, "Cancelling: the worker stops at its next batch.")
        return HttpResponseRedirect(reverse("admin:curation_trainingrun_change", args=[pk]))

    def file_view(self, request: HttpRequest, pk: int, kind: str) -> HttpResponse:
        if not self.has_view_permission(request) or kind not in ("val_reconstructions", "loss_curve"):
            raise Http404("No such file.")
        run = get_object_or_404(TrainingRun, pk=pk)
        return _serve(getattr(run, kind).name, f"run-{run.pk}-{kind}.png")


def _progress(run: TrainingRun) -> dict[str, Any]:
    """Everything the run's page shows; also the JSON its script polls."""
    latest = selectors.training_run_latest_record(run)
    stalled = services.training_run_is_stalled(run)
    version = None
    if run.model_version_id:
        version = {
            "name": run.model_version.name,
            "url": reverse("admin:reconstruct_modelversion_change", args=[run.model_version_id]),
            "compare_url": reverse("admin:reconstruct_modelversion_compare")
            + f"?a={run.model_version_id}&b={getattr(selectors.model_version_active(), 'pk', '')}",
            "is_active": run.model_version.is_active,
        }
    picture = ""
    if run.val_reconstructions:
        # The key changes with each new picture, so the browser fetches it again.
        picture = reverse("admin:curation_trainingrun_file", args=[run.pk, "val_reconstructions"]) + (
            f"?v={Path(run.val_reconstructions.name).stem}"
        )
    return {
        "status": run.status,
        "status_display": run.get_status_display() + (" (no heartbeat from its worker: stalled?)" if stalled else ""),
        "finished": run.is_finished,
        "stalled": stalled,
        "cancel_requested": run.cancel_requested,
        "phase": run.phase,
        "epoch": run.epoch,
        "epochs": run.epochs,
        "percent": round(100 * run.epoch / run.epochs) if run.epochs else 0,
        "eta": _duration(run.eta_seconds) if not run.is_finished else "",
        "elapsed": _duration(latest.get("seconds")),
        "best_epoch": run.best_epoch,
        "latest": {
            key: latest.get(key) for key in ("train_mse", "train_kl", "val_mse", "val_psnr", "val_kl", "val_loss", "lr")
        },
        "history_length": len(run.history),
        "chart_svg": mark_safe(charts.loss_chart_svg(run.history)),
        "picture_url": picture,
        "log_tail": run.log[-6000:],
        "error": run.error,
        "version": version,
    }


# --- The model registry ----------------------------------------------------------------------------


class ModelActivationInline(admin.TabularInline):
    model = ModelActivation
    fk_name = "version"
    fields = ["activated_at", "activated_by", "previous", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Activations of this version"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    change_list_template = "admin/curation/modelversion/change_list.html"
    change_form_template = "admin/curation/modelversion/change_form.html"
    list_display = [
        "name",
        "active",
        "source",
        "psnr",
        "ssim",
        "kl",
        "trained_on",
        "created_by",
        "created_at",
        "buttons",
    ]
    list_display_links = ["name"]
    list_filter = ["source", "is_active"]
    search_fields = ["name", "notes"]
    actions = ["compare_two"]
    readonly_fields = [
        "name",
        "active",
        "source",
        "notes",
        "created_at",
        "created_by",
        "trained_on",
        "metrics_table",
        "model_summary",
        "file_list",
    ]
    fields = readonly_fields
    inlines = [ModelActivationInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        return super().get_queryset(request).select_related("created_by", "training_run__snapshot")

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active(self, version: ModelVersion) -> bool:
        return version.is_active

    def _metric(self, version: ModelVersion, key: str, digits: int) -> str:
        value = (version.metrics or {}).get(key)
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"

    @admin.display(description="PSNR (dB)")
    def psnr(self, version: ModelVersion) -> str:
        return self._metric(version, "psnr", 2)

    @admin.display(description="SSIM")
    def ssim(self, version: ModelVersion) -> str:
        return self._metric(version, "ssim", 3)

    @admin.display(description="KL (nats)")
    def kl(self, version: ModelVersion) -> str:
        return self._metric(version, "kl", 1)

    @admin.display(description="trained on")
    def trained_on(self, version: ModelVersion) -> str:
        run = getattr(version, "training_run", None)
        if run is None:
            return "shipped" if version.source == ModelVersion.Source.SHIPPED else "-"
        return format_html(
            '<a href="{}">run #{}</a> on <a href="{}">snapshot #{}</a> ({} photos)',
            reverse("admin:curation_trainingrun_change", args=[run.pk]),
            run.pk,
            reverse("admin:curation_datasetsnapshot_change", args=[run.snapshot_id]),
            run.snapshot_id,
            run.snapshot.image_count,
        )

    @admin.display(description="")
    def buttons(self, version: ModelVersion) -> str:
        # The buttons belong to small forms outside the changelist's own form (HTML's form= attribute).
        compare = reverse("admin:reconstruct_modelversion_compare") + f"?a={version.pk}"
        if version.is_active:
            return format_html('<a class="button" href="{}">Compare…</a>', compare)
        return format_html(
            '<button type="submit" form="activate-{}" class="button default">Activate</button> '
            '<a class="button" href="{}">Compare with active</a>',
            version.pk,
            compare,
        )

    @admin.display(description="metrics")
    def metrics_table(self, version: ModelVersion) -> str:
        metrics = version.metrics or {}
        rows = [(k, v) for k, v in metrics.items() if isinstance(v, int | float | str)]
        return format_html_join("", "<div><b>{}</b>: {}</div>", rows) if rows else "-"

    @admin.display(description="model")
    def model_summary(self, version: ModelVersion) -> str:
        model = version.metadata.get("model", {})
        training = version.metadata.get("training", {})
        return format_html(
            "{}\N{MULTIPLICATION SIGN}{} input, latent {}, stages {}; {} parameters; trained {} epochs (best {})",
            model.get("width"),
            model.get("height"),
            model.get("latent_dim"),
            model.get("widths"),
            version.metadata.get("parameters", "?"),
            training.get("epochs_run", "?"),
            training.get("best_epoch", "?"),
        )

    @admin.display(description="files in storage")
    def file_list(self, version: ModelVersion) -> str:
        return format_html_join(
            "", "<div><code>{}</code> ({} bytes)</div>", ((e["key"], e["size"]) for e in version.files.values())
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training runs and `manage.py register_default_model`

    def has_change_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False  # read-only; activation goes through its own button (model_version_activate)

    def has_delete_permission(self, request: HttpRequest, obj: ModelVersion | None = None) -> bool:
        return False  # the registry is history: reconstructions name the version that made them

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("compare/", wrap(self.compare_view), name="reconstruct_modelversion_compare"),
            path("<int:pk>/activate/", wrap(self.activate_view), name="reconstruct_modelversion_activate"),
            path("rollback/", wrap(self.rollback_view), name="reconstruct_modelversion_rollback"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        latest = selectors.model_version_activations().first()
        context = {
            **(extra_context or {}),
            "inactive_versions": ModelVersion.objects.filter(is_active=False).values_list("pk", flat=True),
            "rollback_to": latest.previous if latest is not None else None,
            "activations": selectors.model_version_activations()[:10],
        }
        return super().changelist_view(request, context)

    def _can_activate(self, request: HttpRequest) -> bool:
        return request.user.has_perm("reconstruct.change_modelversion")

    @admin.action(description="Compare the two selected versions")
    def compare_two(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> HttpResponse | None:
        ids = list(queryset.values_list("pk", flat=True)[:3])
        if len(ids) != 2:
            self.message_user(request, "Select exactly two versions to compare.", messages.WARNING)
            return None
        return HttpResponseRedirect(reverse("admin:reconstruct_modelversion_compare") + f"?a={ids[0]}&b={ids[1]}")

    def activate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not self._can_activate(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=pk)
        site_services.model_version_activate(version, request.user, note=request.POST.get("note", "")[:500])
        self.message_user(request, f"{version.name} is now the active model; every process uses it from its next job.")
        return HttpResponseRedirect(request.POST.get("next") or reverse("admin:reconstruct_modelversion_changelist"))

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or not self._can_activate(request):
            raise PermissionDenied
        try:
            activation = services.model_version_rollback(request.user)
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
        else:
            self.message_user(request, f"Rolled back: {activation.version.name} is the active model again.")
        return HttpResponseRedirect(reverse("admin:reconstruct_modelversion_changelist"))

    def compare_view(self, request: HttpRequest) -> HttpResponse:
        """Two versions side by side on the same validation photos: metrics and pictures."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        versions = list(ModelVersion.objects.order_by("-created_at"))
        active = next((v for v in versions if v.is_active), None)
        by_pk = {str(v.pk): v for v in versions}
        a = by_pk.get(request.GET.get("a", ""))
        b = by_pk.get(request.GET.get("b", "")) or (active if active is not None and active != a else None)
        comparison = None
        error = ""
        if a is not None and b is not None and a != b:
            try:
                comparison = services.model_version_compare(a, b, sample=8)
            except (OSError, ValueError) as failure:
                error = f"Could not run both models: {failure}"
        keys = ("psnr", "ssim", "mse", "kl", "car_likeness", "n", "ood_auroc")
        metric_rows = [
            (key, [(v.metrics or {}).get(key) for v in (a, b)]) for key in keys if a is not None and b is not None
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Compare model versions",
            "versions": versions,
            "a": a,
            "b": b,
            "comparison": comparison,
            "error": error,
            "metric_rows": [(key, values) for key, values in metric_rows if any(v is not None for v in values)],
            "sample_means": [
                (key, [comparison["means"][v.pk].get(key) for v in (a, b)])
                for key in ("psnr", "ssim", "kl", "car_likeness")
            ]
            if comparison
            else [],
        }
        return TemplateResponse(request, "admin/curation/modelversion/compare.html", context)


@admin.register(ModelActivation)
class ModelActivationAdmin(admin.ModelAdmin):
    """The audit trail: read-only."""

    list_display = ["activated_at", "version", "previous", "activated_by", "note"]
    list_select_related = ["version", "previous", "activated_by"]
    list_filter = ["version"]
    date_hierarchy = "activated_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ModelActivation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ModelActivation | None = None) -> bool:
        return False
