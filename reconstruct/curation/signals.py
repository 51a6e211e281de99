"""A deleted training photo takes its files with it (once the deletion is committed)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.storage import storage_delete_keys


@receiver(post_delete, sender=DatasetImage)
def _delete_dataset_image_files(sender: type[DatasetImage], instance: DatasetImage, **kwargs: Any) -> None:
    keys = instance.file_keys()
    transaction.on_commit(lambda: storage_delete_keys(keys))


@receiver(post_delete, sender=TrainingRun)
def _delete_training_run_files(sender: type[TrainingRun], instance: TrainingRun, **kwargs: Any) -> None:
    keys = [f.name for f in (instance.val_reconstructions, instance.loss_curve) if f.name]
    transaction.on_commit(lambda: storage_delete_keys(keys))
