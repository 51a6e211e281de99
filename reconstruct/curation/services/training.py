"""Training runs from the admin: choose a config, freeze the approved set, queue the run, cancel it.

The run itself executes in the training worker (reconstruct/curation/runner.py, which imports torch);
nothing here does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from reconstruct.curation.models import TrainingRun
from reconstruct.curation.selectors import dataset_approved, training_run_is_stuck
from reconstruct.curation.services.export import dataset_snapshot_create

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)


def training_config_names() -> list[str]:
    """The configs staff can choose from: ml/configs/*.json (CURATION_TRAINING_CONFIG_DIR)."""
    return sorted(p.stem for p in Path(settings.CURATION_TRAINING_CONFIG_DIR).glob("*.json"))


def training_config_load(*, name: str, epochs: int | None = None) -> dict[str, Any]:
    """The named config as a dict (ml.config.TrainConfig layout), with ``epochs`` overridden."""
    from ml.config import TrainConfig

    if name not in training_config_names():
        raise ValidationError(f"Unknown training config {name!r}; choose one of {', '.join(training_config_names())}.")
    try:
        config = TrainConfig.load(Path(settings.CURATION_TRAINING_CONFIG_DIR) / f"{name}.json")
    except (ValueError, TypeError, KeyError) as error:
        raise ValidationError(f"The training config {name!r} is not valid: {error}") from None
    if epochs is not None:
        if epochs < 1:
            raise ValidationError("Epochs must be at least 1.")
        config = config.replace(epochs=epochs)
    return config.to_dict()


def training_run_start(
    *, user: AbstractBaseUser | None, config_name: str, epochs: int | None = None, note: str = ""
) -> TrainingRun:
    """Freeze the approved set and queue a training run on the ``training`` queue."""
    config = training_config_load(name=config_name, epochs=epochs)
    approved = dataset_approved().count()
    if approved < settings.CURATION_MIN_TRAINING_IMAGES:
        raise ValidationError(
            f"Training needs at least {settings.CURATION_MIN_TRAINING_IMAGES} approved photos; there are {approved}."
        )
    with transaction.atomic():
        snapshot = dataset_snapshot_create(user=user, note=note or f"for a {config_name} training run")
        run = TrainingRun.objects.create(
            snapshot=snapshot, config_name=config_name, config=config, epochs=config["epochs"], created_by=user
        )
        pk = run.pk
        transaction.on_commit(lambda: training_run_dispatch(pk))
    return run


def training_run_dispatch(run_id: int) -> None:
    """Queue the run for the training worker; if the broker is unreachable, fail it with a message that says so."""
    from kombu.exceptions import OperationalError as QueueError

    from reconstruct.curation.tasks import training_run_execute_task

    try:
        training_run_execute_task.delay(run_id)
    except (QueueError, OSError) as error:
        logger.exception("could not queue training run %s", run_id)
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED,
            error=f"The run could not be queued: the message broker is unreachable ({error}). Is Redis running?",
            finished_at=timezone.now(),
        )


def training_run_cancel(*, run: TrainingRun, user: AbstractBaseUser | None) -> TrainingRun:
    """Stop a run: a queued (or stalled) one at once; a running one at its worker's next batch."""
    now = timezone.now()
    who = f" by {user}" if user is not None else ""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        if run.status == TrainingRun.Status.QUEUED or training_run_is_stuck(run):
            run.status = TrainingRun.Status.CANCELLED
            run.error = f"Cancelled{who} before it finished."
            run.finished_at = now
            run.phase = ""
        run.cancel_requested = True
        run.save(update_fields=["status", "error", "finished_at", "phase", "cancel_requested"])
    return run
