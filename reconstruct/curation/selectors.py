"""Read queries for curation."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from reconstruct.curation.models import DatasetImage, TrainingRun

# A worker writes a heartbeat every few seconds; a run silent for this long has lost its worker.
TRAINING_HEARTBEAT_SECONDS = 5.0
TRAINING_STALE_SECONDS = 60.0
# A run whose worker died this many times is failed instead of being resumed again.
TRAINING_MAX_ATTEMPTS = 3


def dataset_approved() -> QuerySet[DatasetImage]:
    """The training set: current versions that staff approved, oldest first."""
    return DatasetImage.objects.filter(is_current=True, status=DatasetImage.Status.APPROVED).order_by("id")


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
    """The run's latest per-epoch record (losses, PSNR, seconds), or {} before its first epoch."""
    return run.history[-1] if run.history else {}


def training_run_is_stuck(run: TrainingRun) -> bool:
    """Running, but its worker has not written a heartbeat for a while (it was killed or lost)."""
    if run.status != TrainingRun.Status.RUNNING or run.heartbeat_at is None:
        return False
    return (timezone.now() - run.heartbeat_at).total_seconds() > TRAINING_STALE_SECONDS
