"""The model registry in the admin: versions with their metrics, activate, compare two, roll back, the audit trail.

Activation and rollback call reconstruct/registry/services.py; the comparison runs both models on
training photos (reconstruct/curation/services/compare.py).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from reconstruct.curation.services.compare import model_version_compare
from reconstruct.models import ModelActivation, ModelVersion
from reconstruct.registry.presenters import activation_difference
from reconstruct.registry.selectors import model_version_activations, model_version_active, model_version_list
from reconstruct.registry.services import model_version_activate, model_version_rollback


class ModelActivationInline(admin.TabularInline):
    """The activations of one version, on its page."""

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
    """The registry's list and pages: metrics, Activate, Compare, Roll back (read-only otherwise)."""

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
            '<button type="submit" form="activate-{}" class="button default">Activate…</button> '
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
        latest = model_version_activations().first()
        context = {
            **(extra_context or {}),
            "inactive_versions": ModelVersion.objects.filter(is_active=False).values_list("pk", flat=True),
            "rollback_to": latest.previous if latest is not None else None,
            "activations": model_version_activations()[:10],
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
        """Activate a version after a confirmation page that compares it with the active one (a POST without
        ``confirmed`` from the list or Compare, or a GET, shows the page; its form POSTs ``confirmed=yes``)."""
        if not self._can_activate(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=pk)
        back = request.POST.get("next") or request.GET.get("next") or ""
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = ""
        back = back or reverse("admin:reconstruct_modelversion_changelist")
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            model_version_activate(version=version, user=request.user, note=request.POST.get("note", "")[:500])
            self.message_user(
                request, f"{version.name} is now the active model; every process uses it from its next job."
            )
            return HttpResponseRedirect(back)
        active = model_version_active()
        comparison = None
        if active is not None and active != version:
            try:
                comparison = model_version_compare(a=version, b=active, sample=8)
            except (OSError, ValueError):
                comparison = None  # the registry's own metrics stand in (activation_difference says so)
        return self._confirm_page(request, version, active, comparison, back)

    def _confirm_page(
        self,
        request: HttpRequest,
        version: ModelVersion,
        active: ModelVersion | None,
        comparison: dict | None,
        back: str,
        *,
        rollback: bool = False,
    ) -> TemplateResponse:
        """The page that asks before ``version`` replaces ``active``, naming the difference."""
        verb = "Roll back to" if rollback else "Activate"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{verb} {version.name}?",
            "verb": verb,
            "version": version,
            "active": active,
            "difference": activation_difference(version, active, comparison),
            "back": back,
            "action": reverse("admin:reconstruct_modelversion_rollback")
            if rollback
            else reverse("admin:reconstruct_modelversion_activate", args=[version.pk]),
        }
        return TemplateResponse(request, "admin/curation/modelversion/activate_confirm.html", context)

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        """Undo the latest activation: at once when the earlier version is not worse than the active one, after
        the same confirmation as Activate when it is (a rollback must not switch a worse model on unasked)."""
        if request.method != "POST" or not self._can_activate(request):
            raise PermissionDenied
        changelist = reverse("admin:reconstruct_modelversion_changelist")
        latest = model_version_activations().first()
        target = latest.previous if latest is not None else None
        active = model_version_active()
        if request.POST.get("confirmed") != "yes" and target is not None and active is not None and target != active:
            try:
                comparison = model_version_compare(a=target, b=active, sample=8)
            except (OSError, ValueError):
                comparison = None
            if activation_difference(target, active, comparison).worse:
                return self._confirm_page(request, target, active, comparison, changelist, rollback=True)
        try:
            activation = model_version_rollback(user=request.user, note=request.POST.get("note", "")[:500])
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
        else:
            self.message_user(request, f"Rolled back: {activation.version.name} is the active model again.")
        return HttpResponseRedirect(changelist)

    def compare_view(self, request: HttpRequest) -> HttpResponse:
        """Two versions side by side on the same validation photos: metrics and pictures."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        versions = list(model_version_list())
        active = next((v for v in versions if v.is_active), None)
        by_pk = {str(v.pk): v for v in versions}
        a = by_pk.get(request.GET.get("a", ""))
        b = by_pk.get(request.GET.get("b", "")) or (active if active is not None and active != a else None)
        comparison = None
        error = ""
        if a is not None and b is not None and a != b:
            try:
                comparison = model_version_compare(a=a, b=b, sample=8)
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
