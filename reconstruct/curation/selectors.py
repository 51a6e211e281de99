"""Read queries for curation."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet

from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.models import ModelActivation, ModelVersion


def dataset_counts() -> dict[str, int]:
    """How many current images are pending, approved and rejected, and how many are flagged."""
    current = DatasetImage.objects.filter(is_current=True)
    counts = current.aggregate(
        total=Count("id"),
        pending=Count("id", filter=Q(status=DatasetImage.Status.PENDING)),
        approved=Count("id", filter=Q(status=DatasetImage.Status.APPROVED)),
        rejected=Count("id", filter=Q(status=DatasetImage.Status.REJECTED)),
        near_duplicates=Count("id", filter=Q(near_duplicate_of__isnull=False)),
    )
    return counts


def dataset_image_family(image: DatasetImage) -> QuerySet[DatasetImage]:
    """Every version of the photo: the root and the versions made from it."""
    root = image
    while root.parent_id is not None:
        root = root.parent
    return DatasetImage.objects.filter(Q(pk=root.pk) | Q(parent=root) | Q(parent__parent=root)).order_by("id")


def training_run_latest_record(run: TrainingRun) -> dict[str, Any]:
    return run.history[-1] if run.history else {}


def model_version_activations(version: ModelVersion | None = None) -> QuerySet[ModelActivation]:
    activations = ModelActivation.objects.select_related("version", "previous", "activated_by")
    return activations.filter(Q(version=version) | Q(previous=version)) if version is not None else activations


def model_version_active() -> ModelVersion | None:
    return ModelVersion.objects.filter(is_active=True).first()
