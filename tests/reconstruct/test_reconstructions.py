"""services.reconstruction_*: create, run (idempotent, crash-safe), retry, delete."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import (
    reconstruction_create,
    reconstruction_delete,
    reconstruction_retry,
    reconstruction_run,
)
from tests.support import refused_port, upload

Status = Reconstruction.Status


def test_sync_mode_runs_the_model_while_the_upload_is_stored(monkeypatch, alice, car_png: bytes) -> None:
    """The original's write waits for the model to have started: it fails (after 5 s) when they run in turn."""
    import threading

    from ml import framing
    from reconstruct.services import reconstructions

    model_started = threading.Event()
    overlapped: list[bool] = []
    real_model, real_save_all = framing.photo_reconstruct, reconstructions.storage_save_all

    def model(*args, **kwargs):
        model_started.set()
        return real_model(*args, **kwargs)

    def save_all(files):
        if not overlapped:  # the original and its thumbnail
            overlapped.append(model_started.wait(5.0))
        return real_save_all(files)

    monkeypatch.setattr(framing, "photo_reconstruct", model)
    monkeypatch.setattr(reconstructions, "storage_save_all", save_all)
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png, "red.png"))
    assert overlapped == [True]
    assert reconstruction.status == Status.DONE and reconstruction.attempts == 1, reconstruction.error


def test_a_precomputed_photo_that_the_model_refuses_fails_readably(monkeypatch, alice, car_png: bytes) -> None:
    """What the model raises in its thread reaches the row as a reason, as when it runs in the job itself."""
    from ml import framing, runtime

    def refuse(*args, **kwargs):
        raise runtime.ImageError("corrupt", "The photo could not be read.")

    monkeypatch.setattr(framing, "photo_reconstruct", refuse)
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png, "red.png"))
    assert reconstruction.status == Status.FAILED and "could not be read" in reconstruction.error
    assert all(default_storage.exists(key) for key in reconstruction.file_keys())  # the upload is kept


def test_sync_mode_frames_a_large_photo_on_the_uploads_own_decode(monkeypatch, alice) -> None:
    """A large upright JPEG is decoded once in sync mode: the thumbnail's decode is framing's first one too, and
    the result is the one the worker's own decode of the stored original gives. A photo turned upright (stored
    as a new encoding, so other pixels) is decoded again from what was stored, as the worker does."""
    from PIL import Image

    from ml import framing
    from reconstruct.registry.services import model_version_load_active
    from tests.support import draw_car, encode

    decodes: list[object] = []
    real_decode = framing.image_decode
    monkeypatch.setattr(framing, "image_decode", lambda *a, **k: decodes.append(k) or real_decode(*a, **k))
    scene = Image.new("RGB", (4032, 3024), (70, 100, 60))
    scene.paste(draw_car((2800, 1400), seed=4), (600, 800))
    reconstruction = reconstruction_create(user=alice, upload=upload(encode(scene, "JPEG", quality=90), "big.jpg"))
    assert reconstruction.status == Status.DONE, reconstruction.error
    assert decodes == []
    _version, model = model_version_load_active()
    with default_storage.open(reconstruction.original.name, "rb") as stored:
        worker = framing.photo_reconstruct(model, stored.read())  # what reconstruction_run does
    scores = worker.result.scores
    likeness = worker.car_likeness if worker.car_likeness is not None else scores.car_likeness
    assert reconstruction.scores() == {
        "mse": scores.mse,
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "kl": scores.kl,
        "car_likeness": likeness,
    }
    box = worker.box.as_list() if worker.box else None
    assert (reconstruction.car_box, reconstruction.frame) == (box, worker.frame.as_list())

    decodes.clear()
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: the stored copy is turned and encoded anew
    turned = encode(scene.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)
    reconstruction = reconstruction_create(user=alice, upload=upload(turned, "phone.jpg"))
    assert reconstruction.status == Status.DONE, reconstruction.error
    assert len(decodes) == 1


def test_it_reconstructs_an_upload_in_sync_mode(alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png, "red.png"))
    assert reconstruction.status == Status.DONE, reconstruction.error
    prefix = f"reconstructions/{alice.pk}/{reconstruction.uuid}/"
    assert reconstruction.original.name == prefix + "original.png"
    assert reconstruction.model_input.name == prefix + "model_input.png"
    assert reconstruction.reconstruction.name == prefix + "reconstruction.png"
    assert all(default_storage.exists(key) for key in reconstruction.file_keys())
    scores = reconstruction.scores()
    assert 5 < scores["psnr"] < 60 and 0 < scores["ssim"] <= 1 and scores["kl"] > 0
    assert 0 <= scores["car_likeness"] <= 1
    assert reconstruction.model_version.is_active
    assert reconstruction.attempts == 1


def test_it_queues_after_commit_in_celery_mode(settings, alice, car_png: bytes, django_capture_on_commit_callbacks):
    settings.RECONSTRUCT_MODE = "celery"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    assert reconstruction.status == Status.PENDING
    assert len(callbacks) == 1  # the task is sent only once the row is committed


def test_it_leaves_nothing_behind_for_a_bad_upload(alice, not_an_image: bytes, media_root) -> None:
    with pytest.raises(ValidationError):
        reconstruction_create(user=alice, upload=upload(not_an_image))
    assert not Reconstruction.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


def _pending(alice, car_png: bytes, settings) -> Reconstruction:
    settings.RECONSTRUCT_MODE = "celery"
    return reconstruction_create(user=alice, upload=upload(car_png))  # on_commit never runs inside the test


def test_it_runs_a_job_only_once(settings, alice, car_png: bytes) -> None:
    reconstruction = _pending(alice, car_png, settings)
    first = reconstruction_run(reconstruction.pk)
    second = reconstruction_run(reconstruction.pk)
    assert first.status == second.status == Status.DONE
    assert (
        (first.reconstruction.name, first.attempts)
        == (second.reconstruction.name, second.attempts)
        == (
            first.reconstruction.name,
            1,
        )
    )
    files = sorted(p.name for p in (settings.MEDIA_ROOT / first.original.name).parent.iterdir())
    assert files == ["model_input.png", "original.png", "reconstruction.png", "thumbnail.jpg"]


def test_a_job_that_ran_says_when_it_was_queued_even_if_the_upload_never_heard(settings, alice, car_png) -> None:
    """Redis took the job while the upload's publish timed out (paused Redis): the row kept ``queued_at`` null,
    and even done it said "not in the queue yet" (a new user found it). The claim fills it in; a known time stays."""
    reconstruction = _pending(alice, car_png, settings)
    assert reconstruction.queued_at is None  # on_commit never ran: as if the broker's answer was lost
    done = Reconstruction.objects.get(pk=reconstruction_run(reconstruction.pk).pk)
    assert done.status == Status.DONE and done.queued_at is not None and done.queued_at <= done.started_at
    queued = _pending(alice, car_png, settings)
    known = timezone.now() - timedelta(seconds=5)
    Reconstruction.objects.filter(pk=queued.pk).update(queued_at=known)
    reconstruction_run(queued.pk)
    assert Reconstruction.objects.get(pk=queued.pk).queued_at == known


def test_the_queued_time_is_written_as_the_orm_writes_it_and_only_on_a_pending_row(settings, alice, car_png) -> None:
    from reconstruct.services.reconstructions import _reconstruction_mark_queued

    pending = _pending(alice, car_png, settings)
    when = timezone.now().replace(microsecond=0) - timedelta(seconds=30)  # no microseconds: the shortest form
    _reconstruction_mark_queued(pending.pk, when)
    assert Reconstruction.objects.get(pk=pending.pk).queued_at == when
    # The sweep compares it in SQL: the stored form must be the ORM's own.
    assert list(Reconstruction.objects.filter(queued_at=when).values_list("pk", flat=True)) == [pending.pk]
    assert Reconstruction.objects.filter(pk=pending.pk, queued_at__lt=when + timedelta(microseconds=1)).exists()
    running = _pending(alice, car_png, settings)
    Reconstruction.objects.filter(pk=running.pk).update(status=Status.RUNNING)
    _reconstruction_mark_queued(running.pk, when)
    assert Reconstruction.objects.get(pk=running.pk).queued_at is None


def test_a_worker_claims_its_job_in_one_statement(settings, alice, car_png: bytes) -> None:
    # The claim is one UPDATE ... RETURNING; with the active model's lookup and the result's UPDATE, a job is three
    # statements. Before: BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT to claim it (six on SQLite).
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from reconstruct.registry.services import model_version_load_active

    reconstruction = _pending(alice, car_png, settings)
    model_version_load_active()  # as in a warm worker: the shipped model registered and loaded
    with CaptureQueriesContext(connection) as queries:
        result = reconstruction_run(reconstruction.pk)
    assert (result.status, result.attempts) == (Status.DONE, 1)
    statements = [query["sql"] for query in queries.captured_queries]
    assert len(statements) == 3, statements
    assert statements[0].startswith("UPDATE") and "RETURNING" in statements[0]
    assert statements[2].startswith("UPDATE")


def test_a_job_whose_row_a_retry_reset_after_its_claim_failed_leaves_it_to_the_retrys_job(
    settings, alice, car_png: bytes, monkeypatch
) -> None:
    # The claim found nothing to claim (the row had failed); before the run read the row, "Try again" reset it to
    # pending and queued a job of its own. This run must leave the row to that job, not run the photo twice.
    from reconstruct.services import reconstructions

    reconstruction = _pending(alice, car_png, settings)
    real_claim = reconstructions._reconstruction_claim
    claims: list[int] = []

    # The first claim finds nothing (the row was failed then); any later one would claim the reset row.
    def first_claim_finds_nothing(pk: int):
        claims.append(pk)
        return None if len(claims) == 1 else real_claim(pk)

    monkeypatch.setattr(reconstructions, "_reconstruction_claim", first_claim_finds_nothing)
    result = reconstruction_run(reconstruction.pk)
    assert (result.status, result.attempts) == (Status.PENDING, 0)
    assert not result.reconstruction


def test_the_sweep_queues_again_a_job_left_running_by_a_claim(settings, alice, car_png: bytes, monkeypatch) -> None:
    # The claim writes started_at in raw SQL; the sweep moves a stuck row with a conditional UPDATE that compares
    # started_at with what it read, through the ORM. Both must store the time alike (on SQLite, the same text).
    from reconstruct.services import recovery
    from reconstruct.services.reconstructions import _reconstruction_claim

    reconstruction = _pending(alice, car_png, settings)
    claimed = _reconstruction_claim(reconstruction.pk)  # its worker then died: the row stays running
    assert (claimed.status, claimed.attempts) == (Status.RUNNING, 1)
    assert Reconstruction.objects.filter(pk=reconstruction.pk, started_at=claimed.started_at).exists()
    settings.RECONSTRUCT_STUCK_AFTER = 0
    queued: list[int] = []
    monkeypatch.setattr(recovery, "reconstruction_dispatch", queued.append)
    assert recovery.reconstruction_sweep().requeued == [reconstruction.pk] == queued
    assert Reconstruction.objects.get(pk=reconstruction.pk).status == Status.PENDING


def test_it_picks_up_a_job_whose_worker_died(settings, alice, car_png: bytes) -> None:
    reconstruction = _pending(alice, car_png, settings)
    # What a worker killed mid-job leaves: the row claimed, no result.
    Reconstruction.objects.filter(pk=reconstruction.pk).update(status=Status.RUNNING, attempts=1)
    result = reconstruction_run(reconstruction.pk)
    assert (result.status, result.attempts) == (Status.DONE, 2)


def test_it_gives_up_after_the_attempt_limit(settings, alice, car_png: bytes) -> None:
    reconstruction = _pending(alice, car_png, settings)
    Reconstruction.objects.filter(pk=reconstruction.pk).update(status=Status.RUNNING, attempts=3)
    result = reconstruction_run(reconstruction.pk)
    assert result.status == Status.FAILED
    assert "interrupted 3 times" in result.error
    assert not result.reconstruction


def test_it_fails_with_a_readable_reason_when_the_stored_photo_is_unreadable(settings, alice, car_png: bytes) -> None:
    reconstruction = _pending(alice, car_png, settings)
    default_storage.delete(reconstruction.original.name)
    default_storage.save(reconstruction.original.name, ContentFile(b"garbage, not a PNG"))
    result = reconstruction_run(reconstruction.pk)
    assert result.status == Status.FAILED
    assert result.error.startswith("This file is text, not a photo. Please use a photo saved as JPEG, PNG")
    assert result.error.count("Please") == 1
    assert not result.model_input and not result.reconstruction


def test_it_ignores_a_job_for_a_deleted_row(settings, alice, car_png: bytes) -> None:
    reconstruction = _pending(alice, car_png, settings)
    pk = reconstruction.pk
    reconstruction.delete()
    assert reconstruction_run(pk) is None


def test_it_retries_a_failed_reconstruction(alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    Reconstruction.objects.filter(pk=reconstruction.pk).update(status=Status.FAILED, error="boom")
    reconstruction.refresh_from_db()
    retried = reconstruction_retry(reconstruction)
    assert (retried.status, retried.error, retried.attempts) == (Status.DONE, "", 1)


def test_it_refuses_to_retry_a_finished_reconstruction(alice, car_png: bytes) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    with pytest.raises(ValidationError):
        reconstruction_retry(reconstruction)


def test_it_deletes_the_files_with_the_row(alice, car_png: bytes, django_capture_on_commit_callbacks) -> None:
    reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
    keys = reconstruction.file_keys()
    assert len(keys) == 4
    with django_capture_on_commit_callbacks(execute=True):
        reconstruction_delete(reconstruction)
    assert not Reconstruction.objects.exists()
    assert not any(default_storage.exists(key) for key in keys)


def test_it_deletes_the_files_of_a_deleted_user(alice, car_png: bytes, django_capture_on_commit_callbacks) -> None:
    keys = reconstruction_create(user=alice, upload=upload(car_png)).file_keys()
    with django_capture_on_commit_callbacks(execute=True):
        alice.delete()
    assert not any(default_storage.exists(key) for key in keys)


def test_it_keeps_the_upload_pending_for_the_sweep_when_the_queue_is_down(
    settings, alice, car_png: bytes, django_capture_on_commit_callbacks
):
    from carsite.celery import app

    settings.RECONSTRUCT_MODE = "celery"
    saved = app.conf.broker_url
    with refused_port() as port:
        app.conf.broker_url = f"redis://127.0.0.1:{port}/0"  # nothing listens there
        app._pool = app.amqp._producer_pool = None
        try:
            with django_capture_on_commit_callbacks(execute=True):
                reconstruction = reconstruction_create(user=alice, upload=upload(car_png))
        finally:
            app.conf.broker_url = saved
            app._pool = app.amqp._producer_pool = None
    reconstruction.refresh_from_db()
    # Kept, and not failed: reconstruct/services/recovery.py queues it once the broker answers (test_recovery.py).
    assert (reconstruction.status, reconstruction.queued_at, reconstruction.error) == (Status.PENDING, None, "")


def test_it_fails_a_job_stopped_by_the_soft_time_limit_and_keeps_no_file(
    settings, alice, car_png: bytes, monkeypatch
) -> None:
    from billiard.exceptions import SoftTimeLimitExceeded

    from ml import framing

    reconstruction = _pending(alice, car_png, settings)

    def too_slow(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(framing, "photo_reconstruct", too_slow)
    result = reconstruction_run(reconstruction.pk)
    assert result.status == Status.FAILED
    assert result.error == "The reconstruction took too long and was stopped. Please try again later."
    assert not result.model_input and not result.reconstruction


def test_a_result_is_written_as_the_orm_s_update_writes_it(settings, alice, car_png) -> None:
    from reconstruct.models import ModelVersion
    from reconstruct.services.reconstructions import _reconstruction_finish

    version = ModelVersion.objects.get(is_active=True) if ModelVersion.objects.filter(is_active=True).exists() else None
    outcome = {
        "status": Status.DONE,
        "error": "",
        "model_input": "x/model_input.png",
        "reconstruction": "x/reconstruction.png",
        "mse": 0.0125,
        "psnr": 19.03,
        "ssim": 0.61,
        "kl": 40.5,
        "car_likeness": None,
        "car_box": None,
        "frame": [0, 1, 128, 65],
        "facing": "left",
        "mirrored": True,
        "model_version": version,
        "latent": [0.25, -1.5, 3.0],
        "finished_at": timezone.now(),
    }
    ours, orm = _pending(alice, car_png, settings), _pending(alice, car_png, settings)
    Reconstruction.objects.filter(pk__in=[ours.pk, orm.pk]).update(status=Status.RUNNING, attempts=1)
    assert _reconstruction_finish(ours.pk, 2, outcome) is False  # another attempt's row: untouched
    assert _reconstruction_finish(ours.pk, 1, outcome) is True
    Reconstruction.objects.filter(pk=orm.pk).update(**outcome)
    columns = [
        f.attname
        for f in Reconstruction._meta.concrete_fields
        if f.name not in ("id", "uuid", "original", "thumbnail", "created_at")
    ]
    ours_row = Reconstruction.objects.filter(pk=ours.pk).values(*columns).get()
    assert ours_row == Reconstruction.objects.filter(pk=orm.pk).values(*columns).get()
    assert ours_row["car_box"] is None and ours_row["latent"] == [0.25, -1.5, 3.0] and ours_row["status"] == "done"
    assert Reconstruction.objects.filter(pk=ours.pk, car_box__isnull=True, finished_at=outcome["finished_at"]).exists()
