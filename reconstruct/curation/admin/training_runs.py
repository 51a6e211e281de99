"""Training runs in the admin: start one (config, epochs), watch its live progress, cancel it, see its pictures."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from reconstruct.curation import presenters, selectors
from reconstruct.curation.models import TrainingRun
from reconstruct.curation.services.training import training_config_names, training_run_cancel, training_run_start
from reconstruct.storage import storage_serve


class TrainingRunStartForm(forms.Form):
    """Choose a config (ml/configs/<name>.json), optionally fewer or more epochs, and a note."""

    config = forms.ChoiceField(help_text="ml/configs/<name>.json: the model's size and the training recipe.")
    epochs = forms.IntegerField(
        min_value=1, max_value=5000, required=False, help_text="Leave empty for the config's own number."
    )
    note = forms.CharField(max_length=200, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["config"].choices = [
            (name, presenters.training_config_label(name)) for name in training_config_names()
        ]
        if "quick" in training_config_names():
            self.fields["config"].initial = "quick"


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    """Training runs: the start form, a run's live progress page (polled as JSON), cancel, its pictures."""

    change_form_template = "admin/curation/trainingrun/change_form.html"
    list_display = ["__str__", "status", "config_name", "progress", "snapshot", "created_by", "created_at", "version"]
    list_filter = ["status", "config_name"]
    list_select_related = ["snapshot", "created_by", "model_version"]
    # Status, phase, attempts, start and errors are in the live progress section above these (which the page
    # updates); these fields are drawn once, so nothing here may change while the run runs.
    readonly_fields = [
        "config_name",
        "epochs",
        "snapshot",
        "created_by",
        "created_at",
        "finished_at",
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
                run = training_run_start(
                    user=request.user,
                    config_name=form.cleaned_data["config"],
                    epochs=form.cleaned_data["epochs"],
                    note=form.cleaned_data["note"],
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
        context = {**(extra_context or {}), **presenters.training_run_progress(run), "run": run}
        return super().change_view(request, object_id, form_url, context)

    def progress_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = presenters.training_run_progress(get_object_or_404(TrainingRun, pk=pk))
        data["chart_svg"] = str(data["chart_svg"])
        return JsonResponse(data)

    def cancel_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if request.method != "POST" or not request.user.has_perm("curation.add_trainingrun"):
            raise PermissionDenied
        run = training_run_cancel(run=get_object_or_404(TrainingRun, pk=pk), user=request.user)
        if run.status == TrainingRun.Status.CANCELLED:
            self.message_user(request, f"{run} cancelled.")
        elif not run.is_finished:
            self.message_user(request, "Cancelling: the worker stops at its next batch.")
        return HttpResponseRedirect(reverse("admin:curation_trainingrun_change", args=[pk]))

    def file_view(self, request: HttpRequest, pk: int, kind: str) -> HttpResponse:
        if not self.has_view_permission(request) or kind not in ("val_reconstructions", "loss_curve"):
            raise Http404("No such file.")
        run = get_object_or_404(TrainingRun, pk=pk)
        return storage_serve(key=getattr(run, kind).name, filename=f"run-{run.pk}-{kind}.png", max_age=600)
