"""Read queries of the model registry: none of these writes (see services.model_version_ensure_active)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from reconstruct.models import ModelActivation, ModelVersion


def model_version_active() -> ModelVersion | None:
    """The active version, or None on a database where nothing was activated yet."""
    return ModelVersion.objects.filter(is_active=True).first()


def model_version_list() -> QuerySet[ModelVersion]:
    """Every registered version, newest first."""
    return ModelVersion.objects.order_by("-created_at", "-id")


def model_version_activations(version: ModelVersion | None = None) -> QuerySet[ModelActivation]:
    """The audit trail, newest first; with ``version``, the activations that made or replaced it."""
    activations = ModelActivation.objects.select_related("version", "previous", "activated_by")
    return activations.filter(Q(version=version) | Q(previous=version)) if version is not None else activations
