"""Training runs end to end: a real `celery -A carsite worker -Q training` process (with torch) on
the test Redis, the test database and S3 over HTTP (moto), training a tiny model on drawn photos."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage

from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.curation.services.arrival import dataset_image_add_many
from reconstruct.curation.services.review import dataset_image_approve
from reconstruct.curation.services.training import training_run_cancel, training_run_start
from reconstruct.models import ModelVersion
from reconstruct.registry.services import model_version_activate, model_version_load_active
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TINY = {
    "model": {"height": 16, "width": 32, "channels": 3, "latent_dim": 8, "widths": [8, 16]},
    "batch_size": 4,
    "epochs": 2,
    "beta_warmup_epochs": 1,
    "val_fraction": 0.25,
    "patience": 1,
    "threads": 1,
}


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    (folder / "tiny.json").write_text(json.dumps(TINY))
    # Long enough to be cancelled mid-way: no early stopping, thousands of (millisecond) epochs.
    (folder / "endless.json").write_text(json.dumps({**TINY, "epochs": 5000, "patience": 100000, "min_delta": 0}))
    # Like canonical.json (the shipped model's recipe): every photo faced left, through a facings CSV.
    (folder / "faced.json").write_text(json.dumps({**TINY, "facings": "ml/labels/facings.csv"}))
    # Validation needs 2 images at least: with one photo ml.train fails inside the worker.
    return folder


@pytest.fixture(scope="session")
def training_worker(
    test_database_url: str,
    redis_url: str,
    s3_server: Any,
    celery_app_on_test_redis: Any,
    tmp_path_factory: Any,
) -> Iterator[Any]:
    """A training worker process, as `make run` starts it, storing through S3 on moto."""
    env = {
        **os.environ,
        **s3_server.environment(),
        "DATABASE_URL": test_database_url,
        "CELERY_BROKER_URL": redis_url,
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("training-worker-models")),
        "CURATION_TRAINING_DIR": str(tmp_path_factory.mktemp("training-worker-runs")),
        "PYTHONUNBUFFERED": "1",
    }
    worker = start_worker("training", env, name="test-training")
    yield worker
    stop_worker(worker)


def _wait(run: TrainingRun, worker: Any, done: Callable[[TrainingRun], bool], timeout: float = 120) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} is {run.status} ({run.phase}):\n{run.log[-3000:]}\nworker:\n{worker.log()}")


@pytest.fixture
def trained_setup(settings, on_s3, media, active_model, config_dir: Path, staff, draw) -> Callable[[int], None]:
    settings.CURATION_TRAINING_CONFIG_DIR = config_dir
    settings.CURATION_MIN_TRAINING_IMAGES = 2

    def approve(count: int) -> None:
        arrivals = [(f"car{i}.jpg", lambda i=i: draw(200 + i, size=(96, 40))) for i in range(count)]
        dataset_image_add_many(arrivals=arrivals, source=DatasetImage.Source.IMPORT, added_by=staff)
        dataset_image_approve(images=DatasetImage.objects.all(), user=staff)

    return approve


def test_it_trains_exports_evaluates_and_registers_a_version(trained_setup, training_worker, staff, s3_server) -> None:
    trained_setup(8)
    run = training_run_start(user=staff, config_name="tiny", epochs=2)
    run = _wait(run, training_worker, lambda r: r.is_finished)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.log
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert {"train_mse", "val_mse", "val_psnr", "val_kl", "eta_seconds"} <= set(run.history[-1])
    assert run.epoch == 2 and run.finished_at is not None
    assert "epoch 1: val psnr" in run.log and "registered model version" in run.log

    version = run.model_version
    assert version.source == ModelVersion.Source.TRAINED and not version.is_active
    assert version.name.startswith(f"run{run.pk}-")
    assert version.metrics["snapshot"] == run.snapshot_id and version.metrics["n"] == len(run.val_image_ids) == 2
    assert set(run.val_image_ids) <= set(run.snapshot.items.values_list("image_id", flat=True))
    assert set(version.files) >= {"encoder.onnx", "decoder.onnx", "metadata.json"}
    assert all(key.startswith(f"models/{version.name}/") for key in (e["key"] for e in version.files.values()))
    stored = s3_server.keys(f"models/{version.name}/")
    assert sorted(e["key"] for e in version.files.values()) == stored
    assert default_storage.exists(run.val_reconstructions.name) and default_storage.exists(run.loss_curve.name)

    # Activate it: this process picks the new model up at its next job, without a restart.
    loaded_before = model_version_load_active()[1]
    model_version_activate(version=version, user=staff)
    active, model = model_version_load_active()
    assert active == version and model.version == version.name and model is not loaded_before
    assert model_version_load_active()[1] is model  # and does not reload it per request


def test_it_trains_a_recipe_that_faces_every_photo_left(trained_setup, training_worker, staff) -> None:
    """canonical.json names the shared dataset's facings CSV, which has none of a snapshot's photos: a run of it
    failed ("no facing for 8 photos"). The runner now writes the snapshot's own (test_registry.py)."""
    trained_setup(8)
    run = training_run_start(user=staff, config_name="faced", epochs=1)
    run = _wait(run, training_worker, lambda r: r.is_finished)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.log


def test_it_cancels_a_running_run_and_registers_nothing(trained_setup, training_worker, staff) -> None:
    trained_setup(4)
    run = training_run_start(user=staff, config_name="endless")
    run = _wait(run, training_worker, lambda r: r.epoch >= 2)
    training_run_cancel(run=run, user=staff)
    run = _wait(run, training_worker, lambda r: r.is_finished)
    assert run.status == TrainingRun.Status.CANCELLED
    assert 2 <= run.epoch < 5000 and run.model_version is None
    assert ModelVersion.objects.filter(source=ModelVersion.Source.TRAINED).count() == 0


def test_it_fails_a_crashing_run_with_its_log_and_registers_nothing(
    trained_setup, training_worker, staff, s3_server
) -> None:
    trained_setup(3)
    # Someone overwrote a stored photo behind the registry's back: the worker must stop, not train on it.
    victim = DatasetImage.objects.order_by("id").last()
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=victim.file.name, Body=b"not the same photo")
    run = training_run_start(user=staff, config_name="tiny")
    run = _wait(run, training_worker, lambda r: r.is_finished)
    assert run.status == TrainingRun.Status.FAILED
    assert f"photo #{victim.pk} in storage" in run.error and "no longer matches" in run.error
    assert "Traceback (most recent call last)" in run.log and "copying 3 photos" in run.log
    assert ModelVersion.objects.filter(source=ModelVersion.Source.TRAINED).count() == 0
