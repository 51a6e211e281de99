from __future__ import annotations

import shutil
import time
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.utils import timezone

from ml import runtime
from reconstruct.curation import runner, selectors
from reconstruct.curation.models import DatasetImage, TrainingRun
from reconstruct.curation.selectors import training_run_is_stuck
from reconstruct.curation.services.arrival import dataset_image_add
from reconstruct.curation.services.compare import model_version_compare
from reconstruct.curation.services.export import dataset_snapshot_create
from reconstruct.curation.services.review import dataset_image_approve
from reconstruct.curation.services.training import training_config_load, training_run_cancel
from reconstruct.models import ModelActivation, ModelVersion
from reconstruct.registry.services import model_version_activate, model_version_load_active, model_version_rollback

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(media, active_model, staff, draw) -> TrainingRun:
    for seed in range(2):
        dataset_image_add(data=draw(seed), name=f"{seed}.jpg", source="import")
    dataset_image_approve(images=DatasetImage.objects.all(), user=staff)
    snapshot = dataset_snapshot_create(user=staff)
    return TrainingRun.objects.create(
        snapshot=snapshot, config_name="quick", config=training_config_load(name="quick"), epochs=10
    )


def _files_under(prefix: str) -> list[str]:
    try:
        return default_storage.listdir(prefix)[1]
    except FileNotFoundError:
        return []


def test_it_registers_a_trained_version_and_finishes_the_run_together(run, tiny_model_dirs, tmp_path) -> None:
    model_dir = tmp_path / "export"
    shutil.copytree(tiny_model_dirs[1], model_dir)
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    monitor = runner.RunMonitor(run.pk, run.attempts)
    monitor.write("epoch 10: val psnr 12.50 dB\n")
    version = runner._register(run, model_dir, {"psnr": 12.5}, tmp_path / "train", monitor)
    run.refresh_from_db()
    assert (run.status, run.model_version) == ("succeeded", version)
    # The log is complete when the run reads "succeeded": what was pending, then the version's line.
    assert run.log.index("epoch 10: val psnr") < run.log.index(f"registered model version {version.name}")
    assert version.metrics == {"psnr": 12.5} and f"run #{run.pk}" in version.notes
    assert sorted(_files_under(f"models/{version.name}")) == sorted(version.files)


def test_it_leaves_no_version_and_no_files_when_registration_fails(run, tiny_model_dirs, tmp_path) -> None:
    # The run was cancelled at the last moment: the version must not appear, nor its files stay behind.
    TrainingRun.objects.filter(pk=run.pk).update(status="cancelled")
    name = runtime.load_model(tiny_model_dirs[1]).version
    with pytest.raises(RuntimeError, match="changed by someone else"):
        runner._register(run, tiny_model_dirs[1], {}, tmp_path / "train", runner.RunMonitor(run.pk, run.attempts))
    assert not ModelVersion.objects.filter(name=name).exists()
    assert _files_under(f"models/{name}") == []


def test_a_run_cancelled_after_training_registers_nothing(run, tiny_model_dirs, tmp_path) -> None:
    """Cancelled while its model was exported or registered (training over): it used to be registered anyway, the
    run "Finished", though the admin had said "Cancelling". Now the registration sees the cancel and undoes."""
    from ml.train import Cancelled

    TrainingRun.objects.filter(pk=run.pk).update(status="running", cancel_requested=True)
    name = runtime.load_model(tiny_model_dirs[1]).version
    monitor = runner.RunMonitor(run.pk, run.attempts)
    with pytest.raises(Cancelled, match="before the export"):
        runner._stop_if_cancelled(monitor, "after training, before the export")
    with pytest.raises(Cancelled, match="nothing was registered"):
        runner._register(run, tiny_model_dirs[1], {}, tmp_path / "train", monitor)
    assert not ModelVersion.objects.filter(name=name).exists()
    assert _files_under(f"models/{name}") == []
    assert TrainingRun.objects.get(pk=run.pk).status == "running"  # for training_run_execute to mark cancelled


def test_a_run_faces_each_photo_as_curated_or_as_the_classifier_says(run, staff, tmp_path) -> None:
    """A recipe with ``facings`` (canonical.json) gets one made from the snapshot: the curators' left and right,
    and the facing classifier's answer for photos left "unknown" (every admin upload, until someone marks it)."""
    from ml.orientation import FACINGS

    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    items = list(run.snapshot.items.order_by("image_id"))
    assert len(items) == 2
    items[0].orientation = "right"
    items[0].save()
    names = runner._copy_images(run, tmp_path / "images", runner.RunMonitor(run.pk, run.attempts))
    path = runner._facings_for_snapshot(run, names, tmp_path / "images", tmp_path / "facings.csv")
    rows = dict(line.split(",") for line in path.read_text().splitlines()[1:])
    by_id = {image_id: rows[name] for name, image_id in names.items()}
    assert by_id[items[0].image_id] == "right"
    assert items[1].orientation == "unknown" and by_id[items[1].image_id] in FACINGS
    # A resumed attempt keeps the facings its checkpoints were trained with (ml.train checks their SHA-256).
    path.write_text(path.read_text().replace(",right", ",left"))
    kept = path.read_text()
    assert runner._facings_for_snapshot(run, names, tmp_path / "images", path).read_text() == kept


def test_it_claims_queued_runs_resumes_lost_ones_and_gives_up_after_three(run, monkeypatch) -> None:
    monkeypatch.setattr(selectors, "TRAINING_HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(selectors, "TRAINING_STALE_SECONDS", 0.3)
    assert runner._claim(run.pk)[1] == 1
    # A second delivery while the first worker lives: it waits, sees the heartbeat move, and leaves.
    beat = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=beat)

    def other_worker_beats(seconds: float) -> None:
        TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=beat + timedelta(seconds=1))

    monkeypatch.setattr(runner, "time", SimpleNamespace(sleep=other_worker_beats, monotonic=time.monotonic))
    assert runner._claim(run.pk) is None
    # Its worker died: no heartbeat for longer than the stale limit, so the next delivery resumes it.
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=5))
    claimed, attempt = runner._claim(run.pk)
    assert attempt == 2 and "resuming after its worker stopped" in claimed.log
    TrainingRun.objects.filter(pk=run.pk).update(attempts=3, heartbeat_at=timezone.now() - timedelta(seconds=5))
    assert runner._claim(run.pk) is None
    run.refresh_from_db()
    assert run.status == "failed" and "stopped 3 times" in run.error


def test_it_cancels_queued_and_stalled_runs_at_once(run, staff) -> None:
    assert training_run_cancel(run=run, user=staff).status == "cancelled"
    assert runner._claim(run.pk) is None  # the queued message arrives later and does nothing
    other = TrainingRun.objects.create(
        snapshot=run.snapshot,
        config_name="quick",
        config=run.config,
        epochs=10,
        status="running",
        heartbeat_at=timezone.now() - timedelta(minutes=10),
    )
    assert training_run_is_stuck(other)
    assert training_run_cancel(run=other, user=staff).status == "cancelled"


def test_it_rolls_back_to_the_replaced_version_with_an_audit_trail(second_model, staff) -> None:
    shipped = ModelVersion.objects.get(is_active=True)
    model_version_activate(version=second_model, user=staff, note="better PSNR")
    activation = model_version_rollback(user=staff)
    assert activation.version == shipped and activation.previous == second_model
    assert "Rolled back from" in activation.note
    trail = list(ModelActivation.objects.values_list("version__name", "previous__name"))
    assert trail[:2] == [(shipped.name, second_model.name), (second_model.name, shipped.name)]
    assert ModelVersion.objects.filter(is_active=True).count() == 1


def test_it_refuses_to_roll_back_past_the_first_version(active_model, staff) -> None:
    with pytest.raises(ValidationError, match="no earlier model version"):
        model_version_rollback(user=staff)


def test_it_picks_up_an_activation_without_a_restart_or_a_reload_per_job(second_model, staff) -> None:
    _, model = model_version_load_active()
    assert model_version_load_active()[1] is model
    model_version_activate(version=second_model, user=staff)
    new_version, new_model = model_version_load_active()
    assert new_version == second_model and new_model.version == second_model.name
    assert model_version_load_active()[1] is new_model


def test_it_compares_two_versions_on_the_validation_photos_of_the_newer(second_model, run, staff) -> None:
    images = list(DatasetImage.objects.order_by("id"))
    TrainingRun.objects.filter(pk=run.pk).update(model_version=second_model, val_image_ids=[images[1].pk])
    shipped = ModelVersion.objects.get(is_active=True)
    comparison = model_version_compare(a=shipped, b=second_model)
    assert [row["image"] for row in comparison["rows"]] == [images[1]]
    assert "validation photos of " + second_model.name in comparison["source"]
    row = comparison["rows"][0]
    assert row["input"].startswith("data:image/png;base64,") and len(row["results"]) == 2
    assert set(comparison["means"][shipped.pk]) >= {"psnr", "ssim", "kl"}


def test_it_registers_activates_and_serves_a_quantised_model(active_model, tiny_model_dirs, staff, tmp_path) -> None:
    from ml import quantize
    from reconstruct.registry.services import model_version_register
    from tests.support import draw_car, encode

    model_dir = tmp_path / "int8"
    shutil.copytree(tiny_model_dirs[1], model_dir)
    if not (runtime.Model(model_dir).metadata.get("quantization") or {}).get("applied"):
        # The export kept fp32 for this untrained model: quantise it regardless of PSNR (generous limit).
        photos = [tmp_path / f"car_{i}.jpg" for i in range(2)]
        for i, photo in enumerate(photos):
            photo.write_bytes(encode(draw_car((64, 28), seed=200 + i), "JPEG", quality=92))
        assert quantize.model_quantize(model_dir, photos, max_psnr_drop_db=5.0)["applied"]
    version = model_version_register(model_dir=model_dir, source=ModelVersion.Source.TRAINED)
    assert version.name.endswith("-int8")
    model_version_activate(version=version, user=staff)
    active, model = model_version_load_active()
    assert active == version and model.metadata["quantization"]["applied"] is True
    assert model.run(np.zeros((1, 3, 16, 32), np.float32)).recon.shape == (1, 3, 16, 32)
